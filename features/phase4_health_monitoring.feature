@phase4
Feature: Phase 4 — health checks and monitoring show a pillar going down and coming back
  The executor's /healthz always answers 200 while it serves (so no orchestrator restarts a
  healthy executor because a neighbour is down) and names each pillar "up", "degraded" or
  "down". /api/integration/status gives the detail per pillar (circuit, events waiting,
  deliveries, alerts) and /metrics exposes the same in Prometheus form.

  Background:
    Given a BHIV stack

  @external
  Scenario: With every pillar up, every view says so
    When I execute a task workflow
    Then eventually every workflow's events reach Bucket and Karma exactly once
    And the executor's health check says "ok"
    And the executor's health check reports Bucket as "up"
    And the executor's health check reports Karma as "up"
    And the integration status reports Bucket as "up" with circuit "closed"
    And the integration status reports Karma as "up" with circuit "closed"
    And the integration status shows no alerts

  Scenario Outline: <pillar> going down and coming back shows in /healthz, the status endpoint and /metrics
    Given <pillar> is refused
    When I execute 3 task workflows
    Then every execution succeeded
    And eventually the executor's health check reports <pillar> as "down"
    And the executor's health check says "degraded"
    And the integration status reports <pillar> as "down" with circuit "open"
    And the integration status reports 3 <pillar> events waiting
    And the integration status shows an "unreachable" alert for <pillar>
    And the metric 'workflow_circuit_state{sink="<sink>"}' reads 2
    And the metric 'workflow_outbox_depth{sink="<sink>"}' reads 3
    And the metric 'workflow_events_retried_total{sink="<sink>",kind="unreachable"}' is at least 1
    When <pillar> recovers
    Then eventually the executor's health check reports <pillar> as "up"
    And the executor's health check says "ok"
    And the integration status reports <pillar> as "up" with circuit "closed"
    And the integration status reports 0 <pillar> events waiting
    And the integration status shows no alerts
    And the metric 'workflow_circuit_state{sink="<sink>"}' reads 0
    And the metric 'workflow_outbox_depth{sink="<sink>"}' reads 0
    And the metric 'workflow_events_delivered_total{sink="<sink>"}' reads 3
    And every workflow's events reach Bucket and Karma exactly once

    Examples:
      | pillar | sink   |
      | Bucket | bucket |
      | Karma  | karma  |

  Scenario: A pillar that answers with errors is "degraded" before its circuit opens
    Given the executor setting EXECUTOR_BREAKER_THRESHOLD is "1000"
    And Bucket is erroring
    When I execute a task workflow
    Then eventually the executor's health check reports Bucket as "degraded"
    And the integration status reports Bucket as "degraded" with circuit "closed"
    And the executor's health check reports Karma as "up"
    When Bucket recovers
    Then eventually the executor's health check reports Bucket as "up"
    And every workflow's events reach Bucket and Karma exactly once

  Scenario: The executor counts what it executed, by action type and status
    When I execute 2 task workflows
    And I execute a whatsapp workflow that is missing its message
    Then the metric 'workflow_executions_total{action_type="task",status="success"}' reads 2
    And the metric 'workflow_executions_total{action_type="whatsapp",status="failed"}' reads 1
    And the metric 'workflow_http_requests_total{route="/api/workflow/execute",status="200"}' reads 3
