//! The reply to one API request: a status and an optional JSON body. The VMM
//! builds these; the server turns them into HTTP responses.

use serde::Serialize;

/// One API response. `body`, when present, is a JSON document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<String>,
}

#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

impl ApiResponse {
    /// 204 No Content: the request was carried out.
    pub fn no_content() -> ApiResponse {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// 200 OK with `value` serialized as the JSON body.
    pub fn ok_json(value: &impl Serialize) -> ApiResponse {
        match serde_json::to_string(value) {
            Ok(body) => ApiResponse {
                status: 200,
                body: Some(body),
            },
            Err(e) => ApiResponse::fault(500, &format!("cannot serialize the response: {e}")),
        }
    }

    /// An error: `{"fault_message": msg}` with the given status.
    pub fn fault(status: u16, msg: &str) -> ApiResponse {
        let body = serde_json::to_string(&Fault { fault_message: msg })
            .unwrap_or_else(|_| String::from("{\"fault_message\":\"internal error\"}"));
        ApiResponse {
            status,
            body: Some(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(ApiResponse::no_content().status, 204);
        assert!(ApiResponse::no_content().body.is_none());
        let ok = ApiResponse::ok_json(&serde_json::json!({"a": 1}));
        assert_eq!((ok.status, ok.body.as_deref()), (200, Some("{\"a\":1}")));
        let f = ApiResponse::fault(400, "bad \"x\"");
        assert_eq!(f.status, 400);
        let v: serde_json::Value = serde_json::from_str(f.body.as_deref().unwrap()).unwrap();
        assert_eq!(v["fault_message"], "bad \"x\"");
    }
}
