@replicas
Feature: Replicas — several executors on one PostgreSQL database
  Operators outgrow one executor process. Replicas share one PostgreSQL store: a key is claimed
  once across all of them, the outbox is drained by all of them, and a replica that stops leaves
  its traffic and its events to the others. The stack runs three replicas behind a round-robin
  front on the executor's port; every answer names the replica that served it.

  Background:
    Given a BHIV stack with 3 executor replicas on PostgreSQL

  Scenario: Duplicates spread over the replicas act once
    Given the providers take 300 ms to answer
    When I send the same whatsapp workflow 12 times at once
    Then the answers came from 3 different replicas
    And every answer is the stored success or 409 with error code "execution_in_progress"
    And the provider was called once for the trace
    And eventually Bucket holds exactly one event for the trace

  Scenario: A stopped replica's traffic fails over to the others
    When replica 1 is stopped
    And I execute 9 task workflows
    Then every execution succeeded
    And replica 1 answered none of them and the others all did
    And eventually every workflow's events reach Bucket and Karma exactly once

  Scenario: Replicas stopped and started in turn during a Bucket outage lose nothing and deliver nothing twice
    Given Bucket is refused
    When I execute 6 whatsapp workflows with each replica stopped in turn
    Then every execution succeeded
    When Bucket recovers
    Then eventually every workflow's events reach Bucket and Karma exactly once
    And the provider was called once for each workflow
