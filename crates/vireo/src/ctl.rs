//! `vireo ctl`: the API from the command line, so nobody has to hand-write
//! curl calls. Each action is one request; the JSON a GET returns is
//! printed pretty; a fault prints its message and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use api::client;

use crate::cli::{CtlAction, CtlArgs};
use crate::fail;

/// Long enough for a pause to wait out a device's I/O in flight.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The request an action makes: method, path, body.
pub fn request_of(action: &CtlAction) -> (String, String, Option<String>) {
    let put_action = |t: &str| {
        (
            "PUT".to_string(),
            "/actions".to_string(),
            Some(format!("{{\"action_type\": \"{t}\"}}")),
        )
    };
    let vm_state = |s: &str| {
        (
            "PATCH".to_string(),
            "/vm".to_string(),
            Some(format!("{{\"state\": \"{s}\"}}")),
        )
    };
    match action {
        CtlAction::Info => ("GET".into(), "/".into(), None),
        CtlAction::Config => ("GET".into(), "/vm/config".into(), None),
        CtlAction::Pause => vm_state("Paused"),
        CtlAction::Resume => vm_state("Resumed"),
        CtlAction::Start => put_action("InstanceStart"),
        CtlAction::CtrlAltDel => put_action("SendCtrlAltDel"),
        CtlAction::FlushMetrics => put_action("FlushMetrics"),
        CtlAction::Raw { method, path, body } => {
            (method.to_uppercase(), path.clone(), body.clone())
        }
    }
}

pub fn main(args: &CtlArgs) -> ExitCode {
    let (method, path, body) = request_of(&args.action);
    let reply = match client::request(&args.api_sock, &method, &path, body.as_deref(), TIMEOUT) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let json: Option<serde_json::Value> = serde_json::from_str(&reply.body).ok();
    if reply.status >= 300 {
        let msg = json
            .as_ref()
            .and_then(|j| j.get("fault_message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| reply.body.clone());
        return fail(format!("{method} {path}: {} {msg}", reply.status));
    }
    match json {
        Some(j) => match serde_json::to_string_pretty(&j) {
            Ok(s) => println!("{s}"),
            Err(_) => println!("{}", reply.body),
        },
        None if !reply.body.is_empty() => println!("{}", reply.body),
        None => {}
    }
    ExitCode::SUCCESS
}
