@trace
Feature: Trace propagation — one trace id from Core through the executor, the provider, Bucket and Karma
  Core's task id becomes the workflow's trace id. It travels in the request bodies (Core's
  dispatch, Bucket's event_data.trace_id, Karma's data.context.trace_id) and in two headers on
  every outbound call: X-Trace-Id (the id verbatim) and a W3C traceparent whose trace-id part
  is the same for the whole trace (a UUID's own hex digits; any other id hashed stably), with
  a fresh span id for each call. E-mails carry it as an X-Trace-Id header of the message.

  Background:
    Given a BHIV stack

  @external @simulator-only @journal
  Scenario Outline: Core's task id follows a <action> workflow everywhere
    When a user asks Core "<request>"
    Then eventually Bucket holds exactly one event for Core's task id
    And eventually Karma receives a "workflow_success" life event for Core's task id
    And the provider call for <action> carried Core's task id
    And every call for Core's task id to Bucket and Karma carried it in X-Trace-Id and traceparent
    And every traceparent of Core's task id carries its digits as the W3C trace-id
    And the trace id is in the body of the Bucket event and of the Karma event for Core's task id

    Examples:
      | action   | request                                                    |
      | task     | Remind me: call the bank at 10                             |
      | whatsapp | Send a WhatsApp to +919876543210: the class starts at 5    |
      | email    | Email alice@example.com about the launch: we go live at 10 |
      | ai       | Please summarize: the Gita, chapter 2                      |

  Scenario: Core's own dispatch carries the trace in its body and headers
    Given Core's WORKFLOW_EXECUTOR_URL points at the providers' server
    When a user asks Core "Remind me: call the bank at 10"
    Then the providers' server received Core's dispatch for the task, with the task id in its body and headers

  @external @simulator-only @journal
  Scenario Outline: A caller's own trace id (not a UUID) is kept verbatim through a <action> workflow
    When I execute a <action> workflow with trace id "order-42:retry_1"
    Then the execution succeeded
    And the provider call for <action> carried the trace
    And all traceparents of the trace share one W3C trace-id, with a fresh span id for each call
    And the trace id is in the body of the Bucket event and of the Karma event for the trace

    Examples:
      | action   |
      | whatsapp |
      | ai       |

  Scenario: A trace survives retries: every delivery attempt carries it
    Given Bucket's answers are cut off for the first 2 requests
    When I execute a task workflow
    Then Bucket was sent the trace's event 3 times with the same event id
    And every call for the trace to Bucket and Karma carried it in X-Trace-Id and traceparent
    And all traceparents of the trace share one W3C trace-id, with a fresh span id for each call
