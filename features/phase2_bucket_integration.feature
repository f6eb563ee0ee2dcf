@phase2
Feature: Phase 2 — every execution is recorded in Bucket, the append-only audit trail
  Bucket is the central depository. Every workflow the executor runs, successful or not, is
  written there exactly once, in the shape the integration contract defines, by the requester
  "workflow_executor". The trail can only grow: nothing can be updated or deleted, and every
  event is chained to the one before it by a hash, so any later edit is detectable.

  Background:
    Given a BHIV stack

  @external
  Scenario Outline: A <action> execution lands in Bucket exactly once, with the contract's fields
    When I execute a <action> workflow for product "gurukul"
    Then the execution succeeded
    And Bucket holds exactly one event for the trace
    And the Bucket event has the contract's fields
    And the Bucket event says:
      | field                    | value              |
      | requester_id             | workflow_executor  |
      | event_type               | workflow_execution |
      | trace_id                 | the trace id       |
      | action_type              | <action>           |
      | status                   | success            |
      | product                  | gurukul            |
      | execution_result.success | true               |

    Examples:
      | action   |
      | task     |
      | whatsapp |
      | email    |
      | ai       |

  @external
  Scenario Outline: A failed <action> execution is recorded too
    When I execute a <action> workflow that is missing its <field>
    Then the execution failed with error code "<code>"
    And Bucket holds exactly one event for the trace
    And the Bucket event says:
      | field                       | value   |
      | status                      | failed  |
      | action_type                 | <action> |
      | execution_result.success    | false   |
      | execution_result.error_code | <code>  |

    Examples:
      | action   | field   | code               |
      | task     | title   | missing_task_title |
      | whatsapp | message | missing_message    |
      | email    | subject | missing_subject    |
      | ai       | prompt  | missing_prompt     |

  Scenario: An event delivered several times is stored once (Bucket drops duplicates by event id)
    Given Bucket's answers are cut off for the first 2 requests
    When I execute a task workflow
    Then eventually Bucket holds exactly one event for the trace
    And Bucket was sent the trace's event 3 times with the same event id

  Scenario: The executor writes to the integration document's /workflow/write-event route when configured
    Given the executor setting EXECUTOR_BUCKET_EVENT_PATH is "/workflow/write-event"
    When I execute a whatsapp workflow
    Then eventually Bucket holds exactly one event for the trace
    And every event the executor sent to Bucket went to "/workflow/write-event"

  @external
  Scenario Outline: The audit trail is append-only: <method> <route> is refused
    Given I executed a task workflow
    And eventually Bucket holds exactly one event for the trace
    When someone sends <method> to Bucket's "<route>"
    Then Bucket refuses it with <status>
    And Bucket still holds every event it held before, unchanged

    Examples:
      | method | route               | status |
      | PUT    | /core/write-event   | 405    |
      | PATCH  | /core/write-event   | 405    |
      | DELETE | /core/write-event   | 405    |
      | PUT    | /core/events        | 405    |
      | DELETE | /core/events        | 405    |
      | DELETE | /core/events/1      | 404    |
      | POST   | /core/update-event  | 404    |
      | POST   | /core/delete-event  | 404    |

  @external @simulator-only @hash_chain
  Scenario: The hash chain over the audit trail verifies
    When I execute 5 task workflows
    Then eventually Bucket holds exactly one event for each trace
    And Bucket's hash chain verifies

  Scenario: Editing a stored event afterwards is detected
    When I execute 3 task workflows
    Then eventually Bucket holds exactly one event for each trace
    And Bucket's hash chain verifies
    When an attacker with database access changes the status of stored event 2
    Then Bucket's hash chain is broken at stored event 2
