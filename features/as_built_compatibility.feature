@as_built
Feature: As-built compatibility — the documented integration against the pillars as they are deployed
  PILLARS.md records what the deployed Python pillars actually do, and the simulator's
  "as-built" profiles reproduce it: Karma validates roles, actions and context its own way and
  answers 500 to the documented workflow event; Bucket answers an unauthorised requester with
  HTTP 200 and {"success": false}, keeps duplicates and lets anyone read; Core reads none of the
  documented settings. Running the same integration against them shows where the documented
  contract breaks in production — and that the executor stays correct, says what it could not
  deliver, and loses nothing it can deliver.

  Background:
    Given a BHIV stack
    And the executor setting EXECUTOR_DELIVERY_MAX_ATTEMPTS is "3"

  Scenario Outline: Karma's <profile> profile answers the executor's workflow event <status>
    Given Karma runs the <profile> profile
    When I execute a task workflow
    Then the execution succeeded
    And eventually Karma answered the trace's event <status>
    And eventually the integration status reports <dead letters> Karma events dead-lettered
    And eventually Bucket holds exactly one event for the trace

    Examples:
      | profile  | status | dead letters |
      | spec     | 200    | 0            |
      | as-built | 500    | 1            |

  Scenario: As built, Karma's 500s are dead-lettered after 3 attempts, shown in status and metrics, and nothing else suffers
    Given Karma runs the as-built profile
    When I execute 3 task workflows
    Then every execution succeeded
    And eventually the integration status reports 3 Karma events dead-lettered
    And Karma was sent the trace's event 3 times in all
    And the integration status shows a "dead_letters" alert for Karma mentioning "HTTP 500"
    And the metric 'workflow_events_dead_lettered_total{sink="karma"}' reads 3
    And eventually Bucket holds exactly one event for each trace
    And the executor's health check answers 200
    And the executor still serves: a task workflow succeeds

  Scenario: As built, Bucket's "200 with success: false" to an unauthorised requester is a rejection, not a delivery
    Given Bucket runs the as-built profile
    And the executor writes to Bucket under a requester id Bucket does not allow
    When I execute a task workflow
    Then the execution succeeded
    And eventually Bucket answered the trace's event 200
    And eventually the integration status reports 1 Bucket event dead-lettered
    And Bucket was sent the trace's event 3 times in all
    And the integration status shows a "dead_letters" alert for Bucket mentioning "Unauthorized requester"
    And Bucket holds no event for the trace

  Scenario: As built, Bucket keeps every copy of an event delivered more than once
    Given Bucket runs the as-built profile
    And Bucket's answers are cut off for the first 2 requests
    When I execute a task workflow
    Then eventually Bucket holds 3 events for the trace, all with the same event id

  Scenario Outline: Bucket's <profile> profile answers the executor's attempt to read the audit trail <status>
    Given Bucket runs the <profile> profile
    When "workflow_executor" reads Bucket's events
    Then Bucket answers <status>

    Examples:
      | profile  | status |
      | spec     | 403    |
      | as-built | 200    |

  Scenario Outline: Core's <profile> profile with ENABLE_WORKFLOW_EXECUTION=false: the workflow is <dispatched>
    Given Core runs the <profile> profile
    And Core's setting ENABLE_WORKFLOW_EXECUTION is "false"
    When a user asks Core "Remind me: call the bank at 10"
    Then Core reports the workflow as <dispatched>

    Examples:
      | profile  | dispatched     |
      | spec     | not dispatched |
      | as-built | dispatched     |

  Scenario: With every pillar as built and Bucket flapping, nothing the executor can deliver is lost
    Given every pillar runs the as-built profile
    And the executor setting WORKFLOW_TIMEOUT is "0.3"
    And Bucket is flapping
    When I execute 6 workflows mixing task, whatsapp, email and ai
    Then every execution succeeded
    And every answer arrived within 1000 ms
    When Bucket recovers
    Then eventually every workflow reaches Bucket at least once
    And eventually the integration status reports 6 Karma events dead-lettered
    And the integration status reports 0 Bucket events dead-lettered

  Scenario Outline: With EXECUTOR_KARMA_ENCODING=as-built, a successful workflow changes the user's karma in Karma's <profile> profile
    Given Karma runs the <profile> profile
    And the executor setting EXECUTOR_KARMA_ENCODING is "as-built"
    And a new user
    When I execute a successful task workflow
    Then eventually Karma receives a "completing_lessons" life event for the trace
    And the Karma event says:
      | field     | value              |
      | type      | life_event         |
      | data.role | learner            |
      | data.note | Workflow execution: task |
    And eventually Karma answered the trace's event 200
    And eventually Karma has applied 1 event for the user
    And the user has 5 DharmaPoints and the role "learner"
    And the integration status reports 0 Karma events dead-lettered

    Examples:
      | profile  |
      | spec     |
      | as-built |

  Scenario: With EXECUTOR_KARMA_ENCODING=as-built, a failed workflow sends Karma nothing and is counted as skipped
    Given Karma runs the as-built profile
    And the executor setting EXECUTOR_KARMA_ENCODING is "as-built"
    And a new user
    When I execute a failing task workflow
    Then eventually Bucket holds exactly one event for the trace
    And Karma was sent the trace's event 0 times in all
    And Karma has no record of the user
    And the metric 'workflow_events_skipped_total{sink="karma"}' reads 1
    And the integration status reports 0 Karma events dead-lettered

  Scenario: As built, Core answers the README's example through its stock edumentor_agent with an error and dispatches nothing
    Given Core runs the as-built profile
    When a user asks Core's "edumentor_agent" agent "Create a task: call the bank"
    Then Core answers with status "error"
    And nothing reaches Bucket, Karma or a provider for Core's task id

  Scenario: As built, Core dispatches for workflow_probe_agent without X-Trace-Id or traceparent
    Given Core runs the as-built profile
    And Core's WORKFLOW_EXECUTOR_URL points at the providers' server
    When a user asks Core "Remind me: call the bank at 10"
    Then Core reports the workflow as dispatched
    And the providers' server received Core's dispatch for the task, with the task id in its body and no trace headers
