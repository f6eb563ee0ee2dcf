@idempotency
Feature: Idempotency — a repeated request never acts twice
  An identical request (same trace and payload, or the same Idempotency-Key) gets the stored
  answer back, marked with the "idempotent-replayed: true" header, without the action being
  performed again. A duplicate that arrives while the first is still running gets 409; an
  Idempotency-Key reused for a different request gets 422.

  Background:
    Given a BHIV stack

  @external
  Scenario Outline: Replaying an identical <action> request returns the stored answer without acting again
    When I execute a <action> workflow
    And I send the same request again
    Then the executor answers 200
    And the answer has the header "idempotent-replayed" set to "true"
    And the answer is identical to the first one
    And the provider was called <calls> for the trace
    And eventually Bucket holds exactly one event for the trace

    Examples:
      | action   | calls |
      | task     | never |
      | whatsapp | once  |
      | email    | once  |
      | ai       | once  |

  @external
  Scenario: The same Idempotency-Key with the same request replays the stored answer
    When I execute a whatsapp workflow with Idempotency-Key "send-reminder"
    And I send the same request again
    Then the executor answers 200
    And the answer has the header "idempotent-replayed" set to "true"
    And the answer is identical to the first one
    And the provider was called once for the trace

  Scenario: A duplicate that arrives while the first is still running gets 409
    Given the providers take 800 ms to answer
    When I send the same whatsapp workflow twice at the same time
    Then one answer is 200 and the other is 409 with error code "execution_in_progress" and a Retry-After header
    And the provider was called once for the trace
    And eventually Bucket holds exactly one event for the trace

  @external
  Scenario: An Idempotency-Key reused for a different request is refused with 422
    When I execute a task workflow with Idempotency-Key "create-task"
    And I send a different task workflow with the same Idempotency-Key
    Then the executor answers 422
    And the answer's error code is "idempotency_key_reused"
    And eventually Bucket holds exactly one event for the trace

  Scenario: A replay is still answered after the executor restarts
    When I execute a whatsapp workflow
    And the executor is restarted
    And I send the same request again
    Then the executor answers 200
    And the answer has the header "idempotent-replayed" set to "true"
    And the answer is identical to the first one
    And the provider was called once for the trace
