@governance
Feature: Governance — the executor stays inside its constitutional boundaries
  T8: the executor only appends to Bucket and never reads it (Bucket refuses it reads).
  T5: it has no authority to override decisions: only a "workflow" decision executes anything,
      and nothing in a payload changes that.
  T6: it is not an AI actor that can escalate: it calls Bucket's append route, Karma's event
      route and its own providers, and nothing else (never Core, never a governance route).
  T9 (T7 in Bucket's own threat model): no cross-product leak; a reader of one product never
      sees another product's events.
  No personal data in the audit trail: recipients are masked; message bodies, prompts and model
  answers are left out. When caller tokens are configured, only known callers can make it act.

  Background:
    Given a BHIV stack

  Scenario: T8 — the executor only ever appends to Bucket
    When I execute 4 workflows mixing task, whatsapp, email and ai
    Then eventually every workflow's events reach Bucket and Karma exactly once
    And the executor only ever appended to Bucket

  @external
  Scenario Outline: T8 — Bucket refuses to let the executor read its <what>
    When "workflow_executor" reads Bucket's <what>
    Then Bucket answers 403

    Examples:
      | what   |
      | events |
      | stats  |

  @external
  Scenario Outline: T5 — the decision "<decision>" executes nothing, even with a workflow payload
    When I send the decision "<decision>" with a whatsapp payload
    Then the executor skipped it because the decision is not "workflow"
    And nothing reaches Bucket, Karma or a provider for the trace

    Examples:
      | decision |
      | respond  |
      | task     |
      | insight  |
      | fallback |

  @external
  Scenario: T5 — a payload cannot turn a decision into a workflow
    When I send the decision "respond" with a whatsapp payload that tries to override it
    Then the executor skipped it because the decision is not "workflow"
    And nothing reaches Bucket, Karma or a provider for the trace

  @external
  Scenario: T5 — a payload cannot redirect the execution to another trace
    When I send the hostile request "a payload trace id that disagrees"
    Then the executor answers 422
    And the answer's error code is "trace_id_mismatch"

  Scenario: T6 — the executor calls nothing but its pillars' write routes and its providers
    When I execute 4 workflows mixing task, whatsapp, email and ai
    Then eventually every workflow's events reach Bucket and Karma exactly once
    And the executor called nothing but:
      | pillar        | method | route                |
      | Bucket        | POST   | /core/write-event    |
      | Karma         | POST   | /v1/event/           |
      | the providers | POST   | /v21.0/*             |
      | the providers | POST   | /v1/chat/completions |
      | the SMTP sink | DATA   | alice@example.com    |

  @external
  Scenario: T9 — a reader of one product never sees another product's events
    When I execute a task workflow for product "gurukul"
    And I execute a task workflow for product "finance"
    Then eventually Bucket holds exactly one event for each trace
    When "bhiv_core" reads Bucket's events for product "gurukul"
    Then Bucket answers 200
    And the reader sees the "gurukul" workflow and nothing of "finance"

  @external
  Scenario: No personal data in the audit trail: a WhatsApp message
    When I execute a whatsapp workflow
    Then eventually Bucket holds exactly one event for the trace
    And the Bucket event's recipient is masked as "+91******3210"
    And the Bucket event does not contain any of:
      | +919876543210             |
      | 919876543210              |
      | Your class starts at 5 pm |

  @external
  Scenario: No personal data in the audit trail: an e-mail
    When I execute an email workflow
    Then eventually Bucket holds exactly one event for the trace
    And the Bucket event's recipient is masked as "a***@example.com"
    And the Bucket event does not contain any of:
      | alice@example.com               |
      | We go live at 10, see you there |

  @external
  Scenario: No personal data in the audit trail: an AI prompt and its answer
    When I execute an ai workflow
    Then eventually Bucket holds exactly one event for the trace
    And the Bucket event does not contain any of:
      | Summarize chapter 2 of the Gita |
      | AI_RESPONSE                     |

  Scenario Outline: Only known callers can make it act: a caller <case> gets <status>, and nothing happens
    Given the executor setting EXECUTOR_CALLER_TOKENS is "core:s3cret"
    When I execute a whatsapp workflow <how>
    Then the executor answers <status>
    And the answer's error code is "<code>"
    And no provider was called for the trace
    And Bucket holds no event for the trace

    Examples:
      | case            | how                    | status | code          |
      | without a token | without a token        | 401    | missing_token |
      | with a wrong one | with the token "guess" | 403    | invalid_token |
