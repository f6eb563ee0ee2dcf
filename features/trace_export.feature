@otel
Feature: Trace export — the executor's spans reach the simulator's OTLP receiver
  With OTEL_EXPORTER_OTLP_ENDPOINT set (pillar-sim points the executor at its control port by
  default), the executor exports one span per request, continuing the caller's trace, with
  children for the provider call and the store commit, and a span for every delivery attempt to
  Bucket and Karma in the same trace, even when it happens long after the answer.

  Background:
    Given a BHIV stack

  @external
  Scenario Outline: A <action> execution's trace shows its provider call and its deliveries
    When I execute a <action> workflow
    Then the execution succeeded
    And the trace of that execution shows the provider call and one delivery to each pillar

    Examples:
      | action   |
      | task     |
      | whatsapp |
      | email    |
      | ai       |

  Scenario: Delivery attempts during an outage are spans of the execution's trace
    Given Bucket is refused
    When I execute a task workflow
    Then eventually the trace of that execution shows a failed delivery attempt to Bucket
    When Bucket recovers
    Then the trace of that execution shows failed delivery attempts to Bucket before the delivery
