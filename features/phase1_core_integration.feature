@phase1
Feature: Phase 1 — Core hands workflows to the executor, fire-and-forget
  Core's agent decides whether a user's task needs a real-world action. When it does, Core
  hands the workflow to the Workflow Executor without waiting for it: the user gets Core's
  answer at once, Core's task id becomes the workflow's trace id, and the executor does the
  work in the background.

  Background:
    Given a running BHIV stack

  @external
  Scenario Outline: Core hands a <action> workflow to the executor, with its task id as trace id
    When a user asks Core "<request>"
    Then Core decided on a <action> workflow
    And Core reports the workflow as dispatched
    And the executor performs the workflow under Core's task id
    And Bucket holds exactly one event for Core's task id

    Examples:
      | action   | request                                                    |
      | task     | Remind me: call the bank at 10                             |

    @simulator-only @agent_rules
    Examples:
      | action   | request                                                    |
      | whatsapp | Send a WhatsApp to +919876543210: the class starts at 5    |
      | email    | Email alice@example.com about the launch: we go live at 10 |
      | ai       | Please summarize: the Gita, chapter 2                      |

  @external @simulator-only @agent_rules
  Scenario: A question that needs no action is answered without a workflow
    When a user asks Core "What is dharma?"
    Then Core decided that no workflow is needed
    And Core reports the workflow as not dispatched

  Scenario: Core answers before the workflow finishes
    Given the providers take 1500 ms to answer
    When a user asks Core "Send a WhatsApp to +919876543210: the class starts at 5"
    Then Core answers within 500 ms
    And the workflow for Core's task has not finished yet
    And eventually Bucket holds exactly one event for Core's task id

  Scenario: Core still answers promptly when the executor hangs
    Given Core's WORKFLOW_EXECUTOR_URL points at a service that never answers
    When a user asks Core "Remind me: call the bank at 10"
    Then Core answers within 500 ms
    And Core reports the workflow as dispatched
    And the hanging service received Core's dispatch for the task

  Scenario: Core still answers promptly when the executor is down
    When the executor is stopped
    And a user asks Core "Remind me: call the bank at 10"
    Then Core answers within 500 ms
    And Core reports the workflow as dispatched
    When the executor is started again
    And a user asks Core "Remind me: water the plants"
    Then eventually Bucket holds exactly one event for Core's task id

  @external
  Scenario Outline: <service> answers its health check
    Then <service>'s health check answers 200 with status "<status>"

    Examples:
      | service      | status  |
      | Karma        | healthy |
      | Bucket       | healthy |
      | Core         | healthy |
      | the executor | ok      |
