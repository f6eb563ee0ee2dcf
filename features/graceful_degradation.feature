@degradation
Feature: Graceful degradation — the executor keeps answering while its neighbours fail, and loses nothing
  A pillar outage must never block or break the executor. It answers every request at once,
  because events go to a durable outbox instead of straight to Bucket and Karma; background
  deliverers retry with backoff behind a circuit breaker, so after the pillar recovers every
  event arrives, exactly once (the pillars drop duplicates by event id). A failing provider
  makes that one execution fail fast, with a clear error code, and the failure is audited.

  The executor here gives up on a delivery attempt after 0.3 s (WORKFLOW_TIMEOUT) and on a
  provider after 0.5 s; a "slow" pillar takes 1.5 s to answer.

  Background:
    Given a BHIV stack
    And the executor setting WORKFLOW_TIMEOUT is "0.3"
    And the executor setting WHATSAPP_TIMEOUT is "0.5"
    And the executor setting AI_TIMEOUT is "0.5"
    And the executor setting SMTP_TIMEOUT is "0.5"

  Scenario Outline: <pillar> <fault>: the executor keeps answering, and delivers everything after recovery
    Given <pillar> is <fault>
    When I execute 6 workflows mixing task, whatsapp, email and ai
    Then every execution succeeded
    And every answer arrived within 1000 ms
    When <pillar> recovers
    Then eventually every workflow's events reach Bucket and Karma exactly once

    Examples: Bucket, the audit trail
      | pillar | fault                 |
      | Bucket | refused               |
      | Bucket | blackholed            |
      | Bucket | slow                  |
      | Bucket | erroring              |
      | Bucket | flapping              |
      | Bucket | resetting connections |
      | Bucket | cutting answers off   |

    Examples: Karma, behavioural tracking
      | pillar | fault                 |
      | Karma  | refused               |
      | Karma  | blackholed            |
      | Karma  | slow                  |
      | Karma  | erroring              |
      | Karma  | flapping              |
      | Karma  | resetting connections |
      | Karma  | cutting answers off   |

  Scenario Outline: Bucket and Karma <fault> together: the executor keeps answering, and loses nothing
    Given Bucket is <fault>
    And Karma is <fault>
    When I execute 6 workflows mixing task, whatsapp, email and ai
    Then every execution succeeded
    And every answer arrived within 1000 ms
    When every pillar recovers
    Then eventually every workflow's events reach Bucket and Karma exactly once

    Examples:
      | fault      |
      | refused    |
      | blackholed |
      | slow       |
      | erroring   |
      | flapping   |

  Scenario: Every neighbour in trouble at once, each in its own way
    Given Bucket is blackholed
    And Karma is flapping
    And the providers take 300 ms to answer
    When I execute 8 workflows mixing task, whatsapp, email and ai
    Then every execution succeeded
    And every answer arrived within 1000 ms
    And the executor's health check answers 200
    When every pillar recovers
    Then eventually every workflow's events reach Bucket and Karma exactly once

  Scenario: Bucket failing with 500 for a few requests: its events are retried, then delivered
    Given Bucket is failing for the first 3 requests
    When I execute 3 task workflows
    Then every execution succeeded
    And eventually every workflow's events reach Bucket and Karma exactly once
    And the integration status reports 0 Bucket events dead-lettered

  Scenario Outline: <provider> <fault>: a <action> execution fails fast with "<code>", and the failure is audited
    Given <provider> is <fault>
    When I execute a <action> workflow
    Then the execution failed with error code "<code>"
    And every answer arrived within 1500 ms
    And eventually Bucket holds exactly one event for the trace
    And the Bucket event says:
      | field                       | value  |
      | status                      | failed |
      | execution_result.error_code | <code> |
    And eventually Karma receives a "workflow_failure" life event for the trace
    And the executor still serves: a task workflow succeeds

    Examples:
      | action   | provider      | fault      | code                 |
      | whatsapp | the providers | refused    | provider_unavailable |
      | whatsapp | the providers | blackholed | provider_timeout     |
      | whatsapp | the providers | failing    | provider_error       |
      | ai       | the providers | slow       | provider_timeout     |
      | ai       | the providers | erroring   | provider_error       |
      | email    | the SMTP sink | refused    | provider_unavailable |
      | email    | the SMTP sink | blackholed | provider_timeout     |
      | email    | the SMTP sink | erroring   | provider_error       |
      | email    | the SMTP sink | failing    | provider_rejected    |

  Scenario: An action whose provider failed is never retried
    Given the providers are erroring
    When I execute a whatsapp workflow
    Then the execution failed with error code "provider_error"
    And eventually Bucket holds exactly one event for the trace
    And the provider was called once for the trace
