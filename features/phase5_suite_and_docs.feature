@phase5
Feature: Phase 5 — the documented start-up order and the documented settings work as documented
  The stack starts Karma, Bucket, Core, then the executor, each waited on until it answers its
  health check. Every environment variable the integration documents does what it says:
  ENABLE_WORKFLOW_EXECUTION and WORKFLOW_EXECUTOR_URL on Core's side, WORKFLOW_TIMEOUT on both
  sides, WORKFLOW_EVENTS_ENABLED on Bucket, WORKFLOW_BEHAVIORAL_TRACKING on Karma, and the
  executor's own EXECUTOR_CALLER_TOKENS.

  Scenario: The documented start-up order: Karma, Bucket, Core, then the executor, each healthy first
    Given the pillars Karma, Bucket and Core are running without an executor
    When the executor is started after Karma, Bucket and Core answer their health checks, in that order
    Then the health checks reached Karma, Bucket and Core in that order, each answered 200
    And the executor's health check answers 200
    When a user asks Core "Remind me: call the bank at 10"
    Then eventually Bucket holds exactly one event for Core's task id
    And eventually Karma receives a "workflow_success" life event for Core's task id

  Scenario: An executor that starts while Bucket and Karma are still down loses nothing
    Given a running BHIV stack
    And Bucket is refused
    And Karma is refused
    When the executor is restarted
    Then the executor's health check answers 200
    When I execute 3 task workflows
    Then every execution succeeded
    And the integration status reports 3 Bucket events waiting
    When Karma recovers
    And Bucket recovers
    Then eventually every workflow's events reach Bucket and Karma exactly once

  Scenario: ENABLE_WORKFLOW_EXECUTION=false stops Core's dispatch
    Given Core's setting ENABLE_WORKFLOW_EXECUTION is "false"
    When a user asks Core "Remind me: call the bank at 10"
    Then Core decided on a task workflow
    And Core reports the workflow as not dispatched
    And Core's health check reports dispatch as disabled
    And nothing reaches Bucket, Karma or a provider for Core's task id

  Scenario: WORKFLOW_EXECUTOR_URL redirects Core's dispatch
    Given a running BHIV stack
    When Core's WORKFLOW_EXECUTOR_URL is changed to the providers' server
    And a user asks Core "Remind me: call the bank at 10"
    Then Core reports the workflow as dispatched
    And the providers' server received Core's dispatch for the task, with the task id in its body and headers
    And nothing reaches Bucket, Karma or a provider for Core's task id

  Scenario Outline: WORKFLOW_TIMEOUT=<timeout> bounds each attempt to deliver an event
    Given the executor setting WORKFLOW_TIMEOUT is "<timeout>"
    And Bucket never answers the first request
    When I execute a task workflow
    Then the executor tried Bucket again between <least> and <most> ms after its first attempt
    And eventually Bucket holds exactly one event for the trace

    Examples:
      | timeout | least | most |
      | 0.3     | 250   | 1000 |
      | 1.0     | 950   | 1900 |

  Scenario Outline: WORKFLOW_TIMEOUT=<timeout> bounds Core's dispatch call
    Given Core's setting WORKFLOW_TIMEOUT is "<timeout>"
    And Core's WORKFLOW_EXECUTOR_URL points at a service that never answers and notes when callers hang up
    When a user asks Core "Remind me: call the bank at 10"
    Then Core answers within 500 ms
    And Core hung up on it between <least> and <most> ms after connecting

    Examples:
      | timeout | least | most |
      | 0.3     | 250   | 1000 |
      | 1.0     | 950   | 1900 |

  Scenario: WORKFLOW_EVENTS_ENABLED=false makes Bucket refuse workflow events, and nothing is lost
    Given Bucket's WORKFLOW_EVENTS_ENABLED is "false"
    When I execute 2 task workflows
    Then eventually Bucket answered the trace's event 503
    And the integration status reports 2 Bucket events waiting
    And Bucket holds no event for the trace
    When Bucket's WORKFLOW_EVENTS_ENABLED becomes "true"
    Then eventually Bucket holds exactly one event for each trace

  Scenario: WORKFLOW_BEHAVIORAL_TRACKING=false makes Karma skip workflow events
    Given Karma's WORKFLOW_BEHAVIORAL_TRACKING is "false"
    And a new user
    When I execute a successful task workflow
    Then eventually Karma answered the trace's event with "skipped"
    And Karma has no record of the user
    And eventually Bucket holds exactly one event for the trace
    And the integration status shows no alerts

  Scenario Outline: EXECUTOR_CALLER_TOKENS: a caller <case>
    Given the executor setting EXECUTOR_CALLER_TOKENS is "core:s3cret,ops:0ps-token"
    When I execute a task workflow <how>
    Then the executor answers <status>
    And the answer's error code is "<code>"

    Examples:
      | case                      | how                            | status | code          |
      | without a token           | without a token                | 401    | missing_token |
      | with a wrong token        | with the token "guess"         | 403    | invalid_token |
      | with Core's token         | with the token "s3cret"        | 200    | none          |
      | with another caller's one | with the token "0ps-token"     | 200    | none          |

  Scenario: Core presents its WORKFLOW_EXECUTOR_TOKEN to an executor that requires tokens
    Given the executor setting EXECUTOR_CALLER_TOKENS is "core:s3cret"
    And Core's setting WORKFLOW_EXECUTOR_TOKEN is "s3cret"
    When a user asks Core "Remind me: call the bank at 10"
    Then eventually Bucket holds exactly one event for Core's task id
