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
        CtlAction::CtrlAltDel | CtlAction::Shutdown { .. } => put_action("SendCtrlAltDel"),
        CtlAction::Balloon { mib } => (
            "PATCH".into(),
            "/balloon".into(),
            Some(format!("{{\"amount_mib\": {mib}}}")),
        ),
        CtlAction::Stats => ("GET".into(), "/balloon/statistics".into(), None),
        CtlAction::Memory => ("GET".into(), "/vm/memory".into(), None),
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
    if let CtlAction::Shutdown { timeout } = args.action {
        return wait_for_exit(&args.api_sock, Duration::from_secs(timeout));
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

/// After Ctrl-Alt-Del: wait until nothing answers on the socket any more
/// (the VMM exits when its guest resets, and removes its socket).
fn wait_for_exit(sock: &std::path::Path, timeout: Duration) -> ExitCode {
    let deadline = std::time::Instant::now() + timeout;
    while std::os::unix::net::UnixStream::connect(sock).is_ok() {
        if std::time::Instant::now() >= deadline {
            return fail(format!(
                "the VMM still runs {}s after Ctrl-Alt-Del (does the guest handle it?)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopped");
    ExitCode::SUCCESS
}
