@bad_input
Feature: Bad input — hostile requests are refused with a clear, structured 4xx, and the service keeps serving
  Every refusal has its HTTP status, the reference's "detail" and a structured
  "error": {"code", "message", "field"}. Nothing hostile executes anything, leaks internals or
  stops the executor from serving the next request.

  Background:
    Given a BHIV stack

  @external
  Scenario Outline: <request> is refused with <status> "<code>"
    When I send the hostile request "<request>"
    Then the executor answers <status>
    And the answer's error code is "<code>"
    And the answer leaks no internals
    And the executor still serves: a task workflow succeeds

    Examples: Not JSON, or not an object
      | request                        | status | code                     |
      | malformed JSON                 | 400    | malformed_json           |
      | an empty body                  | 400    | malformed_json           |
      | deeply nested JSON             | 400    | malformed_json           |
      | a JSON array                   | 422    | invalid_type             |
      | a form instead of JSON         | 415    | unsupported_media_type   |
      | no content type                | 415    | unsupported_media_type   |
      | a body over 64 KiB             | 413    | body_too_large           |

    Examples: The trace id
      | request                        | status | code                     |
      | a missing trace id             | 422    | missing_field            |
      | an empty trace id              | 422    | invalid_trace_id         |
      | a numeric trace id             | 422    | invalid_type             |
      | a trace id with spaces         | 422    | invalid_trace_id         |
      | a trace id with a newline      | 422    | invalid_trace_id         |
      | a 129-character trace id       | 422    | invalid_trace_id         |
      | a payload trace id that disagrees | 422 | trace_id_mismatch        |

    Examples: The decision and the payload
      | request                        | status | code                     |
      | an unknown decision            | 422    | invalid_decision         |
      | a missing decision             | 422    | missing_field            |
      | a workflow without payload     | 400    | missing_workflow_payload |
      | an empty payload               | 400    | missing_workflow_payload |
      | a wrong workflow type          | 422    | invalid_workflow_type    |
      | a payload that is a string     | 422    | invalid_type             |
      | a 300-character title          | 422    | field_too_long           |
      | a title with control characters | 422   | invalid_characters       |
      | a numeric title                | 422    | invalid_type             |
      | metadata over 4 KiB            | 422    | field_too_long           |
      | metadata that is a list        | 422    | invalid_type             |
      | a 65-character action type     | 422    | field_too_long           |

    Examples: Headers, methods and routes
      | request                        | status | code                     |
      | an invalid Idempotency-Key     | 422    | invalid_idempotency_key  |
      | a GET on the execute route     | 405    | method_not_allowed       |
      | an unknown route               | 404    | not_found                |

  @external
  Scenario: The reference's exact answer to a workflow without payload is kept
    When I send the hostile request "a workflow without payload"
    Then the executor answers 400
    And the answer's "detail" is "missing_workflow_payload"

  @external
  Scenario Outline: An executed request with a bad <action> payload fails with "<code>", as the reference does
    When I send this request to the executor:
      """
      {"trace_id": "{trace}", "decision": "workflow",
       "data": {"workflow_type": "workflow", "payload": <payload>}}
      """
    Then the executor answers 200
    And the answer says the execution failed with error code "<code>"

    Examples:
      | action   | payload                                                   | code                    |
      | none     | {"title": "no action type"}                               | missing_action_type     |
      | unknown  | {"action_type": "launch_rocket"}                          | unsupported_action_type |
      | whatsapp | {"action_type": "whatsapp", "message": "hi"}              | missing_recipient       |
      | whatsapp | {"action_type": "whatsapp", "recipient": "12", "message": "hi"} | invalid_recipient |
      | email    | {"action_type": "email", "recipient": "not-an-address", "subject": "s", "body": "b"} | invalid_recipient |
      | email    | {"action_type": "email", "recipient": "a@b.co", "subject": "s"} | missing_body      |

  Scenario: A burst of hostile requests leaves the executor healthy and counting them
    When I send the hostile request "malformed JSON"
    And I send the hostile request "an unknown decision"
    And I send the hostile request "a body over 64 KiB"
    Then the metric 'workflow_rejected_requests_total{reason="malformed_json"}' reads 1
    And the metric 'workflow_rejected_requests_total{reason="invalid_decision"}' reads 1
    And the metric 'workflow_rejected_requests_total{reason="body_too_large"}' reads 1
    And the executor's health check answers 200
    And the executor still serves: a task workflow succeeds
