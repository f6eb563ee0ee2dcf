//! The WhatsApp Cloud API and OpenAI-compatible fakes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{client, stack};

fn whatsapp(to: &str, body: &str) -> Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}})
}

async fn send(url: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut request = client().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn whatsapp_accepts_a_text_message_and_records_it() {
    let stack = stack().await;
    let url = format!("{}/v21.0/100000000000001/messages", stack.providers_url());
    let (status, body) = send(&url, Some("sim-whatsapp-token"), &whatsapp("+919876543210", "Class at 5")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["contacts"][0], json!({"input": "+919876543210", "wa_id": "919876543210"}));
    let id = body["messages"][0]["id"].as_str().unwrap();
    assert!(id.starts_with("wamid."));
    let recorded = stack.providers().whatsapp_messages();
    assert_eq!((recorded[0].to.as_str(), recorded[0].body.as_str()), ("+919876543210", "Class at 5"));
    assert_eq!((recorded[0].phone_number_id.as_str(), recorded[0].message_id.as_str()), ("100000000000001", id));
}

#[tokio::test]
async fn whatsapp_errors_have_the_graph_shape() {
    let stack = stack().await;
    let url = format!("{}/v21.0/1/messages", stack.providers_url());
    let cases = [
        (None, whatsapp("+919876543210", "x"), 401, 104),
        (Some("wrong"), whatsapp("+919876543210", "x"), 401, 190),
        (Some("sim-whatsapp-token"), json!({"to": "+919876543210", "text": {"body": "x"}}), 400, 100),
        (Some("sim-whatsapp-token"), whatsapp("+91", "x"), 400, 131_009),
        (Some("sim-whatsapp-token"), whatsapp("+919876543210", &"y".repeat(4097)), 400, 100),
        (Some("sim-whatsapp-token"), whatsapp("+919876543210", ""), 400, 100),
    ];
    for (token, body, status, code) in cases {
        let (got, error) = send(&url, token, &body).await;
        assert_eq!(got.as_u16(), status, "{error}");
        assert_eq!(error["error"]["code"], code, "{error}");
        assert_eq!(error["error"]["type"], "OAuthException");
        assert!(error["error"]["fbtrace_id"].is_string());
    }
    let (status, error) = send(&format!("{}/latest/1/messages", stack.providers_url()), Some("t"), &json!({})).await;
    assert_eq!((status.as_u16(), error["error"]["code"].as_u64()), (400, Some(2500)));
    assert!(stack.providers().whatsapp_messages().is_empty());
}

#[tokio::test]
async fn chat_completions_answer_deterministically_in_openais_shape() {
    let stack = stack().await;
    let url = format!("{}/v1/chat/completions", stack.providers_url());
    let request = json!({"model": "sim-model", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "explain karma"}]});
    let (status, body) = send(&url, Some("sim-ai-key"), &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "sim-model");
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "[AI_RESPONSE] explain karma", "refusal": null})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 4 + 3);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(stack.providers().chat_requests()[0].content, "[AI_RESPONSE] explain karma");

    let (status, error) = send(&url, Some("sk-wrong-1234"), &request).await;
    assert_eq!((status.as_u16(), error["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let (status, error) = send(&url, Some("sim-ai-key"), &json!({"messages": []})).await;
    assert_eq!((status.as_u16(), error["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    let (status, error) =
        send(&url, Some("sim-ai-key"), &json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})).await;
    assert_eq!((status.as_u16(), error["error"]["param"].as_str()), (400, Some("messages.[0].role")));
}
