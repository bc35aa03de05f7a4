//! Router tests, and the check that `ROUTES` and docs/api/vireo-openapi.yaml
//! describe the same API.

use super::*;

fn ok(method: &str, path: &str, body: &str) -> ApiRequest {
    match parse_request(method, path, body.as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn err(method: &str, path: &str, body: &str) -> ApiError {
    match parse_request(method, path, body.as_bytes()) {
        Ok(r) => panic!("{method} {path} parsed as {r:?}"),
        Err(e) => e,
    }
}

const DRIVE: &str =
    r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": true}"#;

#[test]
fn simple_gets() {
    assert_eq!(ok("GET", "/", ""), ApiRequest::DescribeInstance);
    assert_eq!(ok("GET", "/version", ""), ApiRequest::GetVersion);
    assert_eq!(ok("GET", "/vm/config", ""), ApiRequest::GetVmConfig);
    assert_eq!(ok("GET", "/vm/memory", ""), ApiRequest::GetVmMemory);
    assert_eq!(
        ok("GET", "/machine-config", ""),
        ApiRequest::GetMachineConfig
    );
    assert_eq!(
        ok("GET", "/balloon/statistics", ""),
        ApiRequest::DescribeBalloonStats
    );
    assert_eq!(ok("GET", "/mmds?x=1", ""), ApiRequest::GetMmds);
}

#[test]
fn each_action() {
    for (name, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let body = format!(r#"{{"action_type": "{name}"}}"#);
        assert_eq!(
            ok("PUT", "/actions", &body),
            ApiRequest::CreateSyncAction(InstanceActionInfo {
                action_type: action
            })
        );
    }
    let e = err("PUT", "/actions", r#"{"action_type": "Boot"}"#);
    assert!(e.to_string().contains("action_type"), "{e}");
}

#[test]
fn unknown_routes_are_400() {
    for (m, p) in [
        ("GET", "/nope"),
        ("POST", "/actions"),
        ("DELETE", "/drives/a"),
        ("GET", "/actions"),
        ("PUT", "/drives/a/b"),
        ("PUT", "/vm"),
        ("get", "/"),
        ("GET", ""),
    ] {
        let e = err(m, p, "");
        assert!(matches!(e, ApiError::InvalidRoute { .. }), "{m} {p}: {e:?}");
        assert_eq!(e.status(), 400);
        let r = e.to_response();
        let v: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        let msg = v["fault_message"].as_str().unwrap();
        assert!(
            msg.starts_with("Invalid request method and/or path"),
            "{msg}"
        );
    }
}

#[test]
fn drives_and_ids() {
    match ok("PUT", "/drives/rootfs", DRIVE) {
        ApiRequest::PutDrive(d) => assert_eq!(d.drive_id, "rootfs"),
        other => panic!("{other:?}"),
    }
    let e = err("PUT", "/drives/other", DRIVE);
    assert!(matches!(e, ApiError::IdMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("other") && e.to_string().contains("rootfs"));
    assert_eq!(e.status(), 400);
    assert!(matches!(
        err("PUT", "/drives/", DRIVE),
        ApiError::InvalidPathId { .. }
    ));
    assert!(matches!(
        err("PUT", "/drives/a.b", DRIVE),
        ApiError::InvalidPathId { .. }
    ));
    let e = err("PATCH", "/drives/x", r#"{"drive_id": "y"}"#);
    assert!(matches!(e, ApiError::IdMismatch { .. }));
    assert!(matches!(
        ok(
            "PATCH",
            "/drives/x",
            r#"{"drive_id": "x", "path_on_host": "/n"}"#
        ),
        ApiRequest::PatchDrive(_)
    ));
    let e = err(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#,
    );
    assert!(matches!(
        e,
        ApiError::IdMismatch {
            field: "iface_id",
            ..
        }
    ));
    assert!(matches!(
        ok(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0"}"#
        ),
        ApiRequest::PatchNetworkInterface(_)
    ));
    let e = err("PUT", "/pmem/p0", r#"{"id": "p1", "path_on_host": "/p"}"#);
    assert!(matches!(e, ApiError::IdMismatch { field: "id", .. }));
}

#[test]
fn bodies_required_forbidden_optional() {
    assert!(matches!(
        err("PUT", "/boot-source", ""),
        ApiError::EmptyBody { .. }
    ));
    assert!(matches!(
        err("PUT", "/boot-source", "  \r\n"),
        ApiError::EmptyBody { .. }
    ));
    assert!(matches!(
        err("GET", "/version", "{}"),
        ApiError::UnexpectedBody { .. }
    ));
    assert!(matches!(
        err("PATCH", "/balloon/hinting/stop", "{}"),
        ApiError::UnexpectedBody { .. }
    ));
    assert_eq!(
        ok("PATCH", "/balloon/hinting/start", ""),
        ApiRequest::StartBalloonHinting(BalloonStartCmd::default())
    );
    assert_eq!(
        ok(
            "PATCH",
            "/balloon/hinting/start",
            r#"{"acknowledge_on_stop": true}"#
        ),
        ApiRequest::StartBalloonHinting(BalloonStartCmd {
            acknowledge_on_stop: true
        })
    );
    let e = err("PUT", "/boot-source", "{not json");
    assert!(matches!(e, ApiError::InvalidBody { .. }), "{e:?}");
    let e = err(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 1} {}"#,
    );
    assert!(matches!(e, ApiError::InvalidBody { .. }), "{e:?}");
}

#[test]
fn mmds_takes_objects() {
    assert!(matches!(
        ok("PUT", "/mmds", r#"{"a": {"b": 1}}"#),
        ApiRequest::PutMmds(_)
    ));
    assert!(matches!(
        ok("PATCH", "/mmds", r#"{"a": null}"#),
        ApiRequest::PatchMmds(_)
    ));
    assert!(matches!(
        err("PUT", "/mmds", "[1]"),
        ApiError::InvalidBody { .. }
    ));
}

#[test]
fn machine_config_put_and_patch() {
    assert!(matches!(
        ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 512}"#
        ),
        ApiRequest::PutMachineConfig(_)
    ));
    assert!(matches!(
        err("PUT", "/machine-config", r#"{"vcpu_count": 2}"#),
        ApiError::InvalidBody { .. }
    ));
    assert_eq!(
        ok("PATCH", "/machine-config", r#"{"smt": true}"#),
        ApiRequest::PatchMachineConfig(MachineConfigUpdate {
            smt: Some(true),
            ..MachineConfigUpdate::default()
        })
    );
    let e = err("PATCH", "/machine-config", r#"{"vcpu_count": 64}"#);
    assert!(matches!(e, ApiError::InvalidField { .. }) && e.to_string().contains("vcpu_count"));
}

#[test]
fn routes_are_unique() {
    for (i, a) in ROUTES.iter().enumerate() {
        for b in &ROUTES[i + 1..] {
            assert!(
                a.method != b.method || a.path != b.path,
                "{} {} twice",
                a.method.as_str(),
                a.path
            );
        }
    }
}

/// (method, path) of every operation in the OpenAPI document.
fn documented_operations() -> Vec<(String, String)> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../../docs/api/vireo-openapi.yaml"))
            .expect("docs/api/vireo-openapi.yaml is valid YAML");
    let paths = doc["paths"].as_mapping().expect("the document has paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path keys are strings");
        for (method, _) in item.as_mapping().expect("a path item is a mapping") {
            let method = method.as_str().expect("method keys are strings");
            if ["get", "put", "patch", "post", "delete", "head", "options"].contains(&method) {
                ops.push((method.to_ascii_uppercase(), path.to_string()));
            }
        }
    }
    ops
}

/// A concrete path for a template: `{id}` becomes `x`.
fn concrete(template: &str) -> String {
    match template.find('{') {
        Some(open) => format!("{}x", &template[..open]),
        None => template.to_string(),
    }
}

#[test]
fn every_documented_operation_is_routed() {
    let ops = documented_operations();
    assert!(ops.len() >= ROUTES.len());
    for (method, path) in &ops {
        // Any body: what matters is that the route exists.
        if let Err(ApiError::InvalidRoute { .. }) = parse_request(method, &concrete(path), b"{}") {
            panic!("{method} {path} is documented but not routed");
        }
    }
}

#[test]
fn every_route_is_documented() {
    let ops = documented_operations();
    for r in ROUTES {
        let key = (r.method.as_str().to_string(), r.path.to_string());
        assert!(
            ops.contains(&key),
            "{} {} is routed but not documented",
            key.0,
            key.1
        );
    }
}
