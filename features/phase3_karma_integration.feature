@phase3
Feature: Phase 3 — behavioural events reach Karma and move the user's karma as the rule says
  After every workflow the executor tells Karma what happened, as a "life_event" of the user
  who asked for it: "workflow_success" or "workflow_failure". Karma learns with its Q-learning
  rule. Roles are the states (learner, volunteer, seva, guru), actions are the actions; for an
  event with role s, action a and reward r, where s' is the role the user's merit reaches:

      Q(s, a) ← Q(s, a) + 0.15 · (r + 0.9 · max Q(s', ·) − Q(s, a))

  The executor's users have the role "user", which Karma treats as the learner state. A
  successful workflow is worth +5 DharmaPoints (like a completed lesson); a failed one is worth
  0 (the failure is the provider's, not the user's), but its Q-value still moves.

  Background:
    Given a BHIV stack
    And a new user

  @external @simulator-only @journal
  Scenario Outline: A <outcome> workflow sends Karma a "<karma action>" life event
    When I execute a <outcome> task workflow
    Then eventually Karma receives a "<karma action>" life event for the trace
    And the Karma event says:
      | field                    | value                    |
      | type                     | life_event               |
      | source                   | workflow_executor        |
      | data.role                | user                     |
      | data.action              | <karma action>           |
      | data.note                | Workflow execution: task |
      | data.context.trace_id    | the trace id             |
      | data.context.action_type | task                     |
      | data.context.source      | workflow_executor        |

    Examples:
      | outcome    | karma action     |
      | successful | workflow_success |
      | failing    | workflow_failure |

  @external
  Scenario: A successful workflow changes the user's karma, read through Karma's own stats
    When I execute a successful task workflow
    Then eventually Karma has applied 1 event for the user
    And the user has 5 DharmaPoints and the role "learner"

  Scenario Outline: The rule, worked through for a new user: <sequence>
    When the user's workflows end as follows: "<sequence>"
    Then eventually Karma has applied <events> events for the user
    And the user has <dharma> DharmaPoints and the role "learner"
    And Q(learner, workflow_success) is <q success>
    And Q(learner, workflow_failure) is <q failure>

    Examples:
      | sequence                  | events | dharma | q success | q failure  |
      | success                   | 1      | 5      | 0.75      | 0          |
      | failure                   | 1      | 0      | 0         | 0          |
      | success, success          | 2      | 10     | 1.48875   | 0          |
      | success, failure          | 2      | 5      | 0.75      | 0.10125    |
      | success, success, failure | 3      | 10     | 1.48875   | 0.20098125 |

  @external @simulator-only @qtable
  Scenario Outline: Karma's Q-value moves as the rule says for a <outcome> workflow
    Given I note the user's karma and Karma's Q-table
    When the user's workflows end as follows: "<sequence>"
    Then Q(learner, <karma action>) moved as the rule says for a reward of <reward>
    And the user's DharmaPoints grew by <reward>

    Examples:
      | outcome    | sequence | karma action     | reward |
      | successful | success  | workflow_success | 5      |
      | failing    | failure  | workflow_failure | 0      |

  Scenario: An event delivered several times is applied once (Karma drops duplicates by event id)
    Given Karma's answers are cut off for the first 2 requests
    When I execute a successful task workflow
    Then Karma was sent the trace's event 3 times in all
    And eventually Karma has applied 1 event for the user
    And the user has 5 DharmaPoints and the role "learner"
