//! Routing: one method and path, plus a body, become one typed
//! [`ApiRequest`]. Every route lives in [`ROUTES`], the single table the
//! OpenAPI test checks against `docs/api/vireo-openapi.yaml`. Requests that
//! fail here (unknown route, bad JSON, id mismatch) never reach the VMM.

use serde_json::Value;

use crate::error::ApiError;
use crate::models::*;

/// One operation of the API, its body parsed and validated. Serializable
/// so a request can be relayed whole to a VMM in another process (the
/// nested rig's).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ApiRequest {
    /// `GET /`
    DescribeInstance,
    /// `PUT /actions`
    CreateSyncAction(InstanceActionInfo),
    /// `GET /balloon`
    DescribeBalloonConfig,
    /// `PUT /balloon`
    PutBalloon(Balloon),
    /// `PATCH /balloon`
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon/statistics`
    DescribeBalloonStats,
    /// `PATCH /balloon/statistics`
    PatchBalloonStatsInterval(BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`
    StartBalloonHinting(BalloonStartCmd),
    /// `GET /balloon/hinting/status`
    DescribeBalloonHinting,
    /// `PATCH /balloon/hinting/stop`
    StopBalloonHinting,
    /// `PUT /boot-source`
    PutBootSource(BootSource),
    /// `PUT /cpu-config`
    PutCpuConfig(CpuConfig),
    /// `PUT /drives/{drive_id}`
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}`
    PatchDrive(PartialDrive),
    /// `PUT /pmem/{id}`
    PutPmem(Pmem),
    /// `PATCH /pmem/{id}`
    PatchPmem(PartialPmem),
    /// `PUT /logger`
    PutLogger(Logger),
    /// `GET /machine-config`
    GetMachineConfig,
    /// `PUT /machine-config`
    PutMachineConfig(MachineConfiguration),
    /// `PATCH /machine-config`
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /metrics`
    PutMetrics(Metrics),
    /// `PUT /mmds` (any JSON object)
    PutMmds(Value),
    /// `PATCH /mmds` (any JSON object, merged)
    PatchMmds(Value),
    /// `GET /mmds`
    GetMmds,
    /// `PUT /mmds/config`
    PutMmdsConfig(MmdsConfig),
    /// `PUT /entropy`
    PutEntropy(EntropyDevice),
    /// `PUT /serial`
    PutSerial(SerialDevice),
    /// `PUT /hotplug/memory`
    PutMemoryHotplug(MemoryHotplugConfig),
    /// `PATCH /hotplug/memory`
    PatchMemoryHotplug(MemoryHotplugSizeUpdate),
    /// `GET /hotplug/memory`
    GetMemoryHotplug,
    /// `PUT /network-interfaces/{iface_id}`
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}`
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PUT /snapshot/create`
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`
    LoadSnapshot(SnapshotLoadParams),
    /// `GET /version`
    GetVersion,
    /// `PATCH /vm`
    PatchVm(Vm),
    /// `GET /vm/config`
    GetVmConfig,
    /// `GET /vm/memory` (Vireo's own): the VM's host memory accounting
    GetVmMemory,
    /// `PUT /vsock`
    PutVsock(Vsock),
}

/// The HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    /// The method named `s` (case-sensitive, as HTTP is), if the API uses it.
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "GET" => Some(Method::Get),
            "PUT" => Some(Method::Put),
            "PATCH" => Some(Method::Patch),
            _ => None,
        }
    }

    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// Which operation a route is; `parse_request` builds the matching
/// [`ApiRequest`] variant from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    DescribeInstance,
    CreateSyncAction,
    DescribeBalloonConfig,
    PutBalloon,
    PatchBalloon,
    DescribeBalloonStats,
    PatchBalloonStatsInterval,
    StartBalloonHinting,
    DescribeBalloonHinting,
    StopBalloonHinting,
    PutBootSource,
    PutCpuConfig,
    PutDrive,
    PatchDrive,
    PutPmem,
    PatchPmem,
    PutLogger,
    GetMachineConfig,
    PutMachineConfig,
    PatchMachineConfig,
    PutMetrics,
    PutMmds,
    PatchMmds,
    GetMmds,
    PutMmdsConfig,
    PutEntropy,
    PutSerial,
    PutMemoryHotplug,
    PatchMemoryHotplug,
    GetMemoryHotplug,
    PutNetworkInterface,
    PatchNetworkInterface,
    CreateSnapshot,
    LoadSnapshot,
    GetVersion,
    PatchVm,
    GetVmConfig,
    GetVmMemory,
    PutVsock,
}

/// What a route accepts as its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// No body allowed.
    None,
    /// A JSON body is required.
    Required,
    /// A JSON body may be given; without one the defaults apply.
    Optional,
}

/// One route: a method, a path template (`{name}` marks a path id) and the
/// operation it names.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub op: Op,
    pub body: BodyRule,
}

const fn route(method: Method, path: &'static str, op: Op, body: BodyRule) -> Route {
    Route {
        method,
        path,
        op,
        body,
    }
}

use BodyRule::{None as NoBody, Optional, Required};
use Method::{Get, Patch, Put};

/// Every route of the API, in the order of the OpenAPI document.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route(Get,   "/",                               Op::DescribeInstance,          NoBody),
    route(Put,   "/actions",                        Op::CreateSyncAction,          Required),
    route(Get,   "/balloon",                        Op::DescribeBalloonConfig,     NoBody),
    route(Put,   "/balloon",                        Op::PutBalloon,                Required),
    route(Patch, "/balloon",                        Op::PatchBalloon,              Required),
    route(Get,   "/balloon/statistics",             Op::DescribeBalloonStats,      NoBody),
    route(Patch, "/balloon/statistics",             Op::PatchBalloonStatsInterval, Required),
    route(Patch, "/balloon/hinting/start",          Op::StartBalloonHinting,       Optional),
    route(Get,   "/balloon/hinting/status",         Op::DescribeBalloonHinting,    NoBody),
    route(Patch, "/balloon/hinting/stop",           Op::StopBalloonHinting,        NoBody),
    route(Put,   "/boot-source",                    Op::PutBootSource,             Required),
    route(Put,   "/cpu-config",                     Op::PutCpuConfig,              Required),
    route(Put,   "/drives/{drive_id}",              Op::PutDrive,                  Required),
    route(Patch, "/drives/{drive_id}",              Op::PatchDrive,                Required),
    route(Put,   "/pmem/{id}",                      Op::PutPmem,                   Required),
    route(Patch, "/pmem/{id}",                      Op::PatchPmem,                 Required),
    route(Put,   "/logger",                         Op::PutLogger,                 Required),
    route(Get,   "/machine-config",                 Op::GetMachineConfig,          NoBody),
    route(Put,   "/machine-config",                 Op::PutMachineConfig,          Required),
    route(Patch, "/machine-config",                 Op::PatchMachineConfig,        Required),
    route(Put,   "/metrics",                        Op::PutMetrics,                Required),
    route(Put,   "/mmds",                           Op::PutMmds,                   Required),
    route(Patch, "/mmds",                           Op::PatchMmds,                 Required),
    route(Get,   "/mmds",                           Op::GetMmds,                   NoBody),
    route(Put,   "/mmds/config",                    Op::PutMmdsConfig,             Required),
    route(Put,   "/entropy",                        Op::PutEntropy,                Required),
    route(Put,   "/serial",                         Op::PutSerial,                 Required),
    route(Put,   "/hotplug/memory",                 Op::PutMemoryHotplug,          Required),
    route(Patch, "/hotplug/memory",                 Op::PatchMemoryHotplug,        Required),
    route(Get,   "/hotplug/memory",                 Op::GetMemoryHotplug,          NoBody),
    route(Put,   "/network-interfaces/{iface_id}",  Op::PutNetworkInterface,       Required),
    route(Patch, "/network-interfaces/{iface_id}",  Op::PatchNetworkInterface,     Required),
    route(Put,   "/snapshot/create",                Op::CreateSnapshot,            Required),
    route(Put,   "/snapshot/load",                  Op::LoadSnapshot,              Required),
    route(Get,   "/version",                        Op::GetVersion,                NoBody),
    route(Patch, "/vm",                             Op::PatchVm,                   Required),
    route(Get,   "/vm/config",                      Op::GetVmConfig,               NoBody),
    route(Get,   "/vm/memory",                      Op::GetVmMemory,               NoBody),
    route(Put,   "/vsock",                          Op::PutVsock,                  Required),
];

/// Matches `path` against a template; on a match returns the path id, if
/// the template has one (`Some("")` when the id segment is empty).
fn match_template<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    match template.find('{') {
        None => (template == path).then_some(None),
        Some(open) => {
            let prefix = &template[..open];
            let id = path.strip_prefix(prefix)?;
            (!id.contains('/')).then_some(Some(id))
        }
    }
}

/// Finds the route for `method` and `path` (no query string).
pub fn find_route<'p>(method: &str, path: &'p str) -> Option<(&'static Route, Option<&'p str>)> {
    let method = Method::parse(method)?;
    ROUTES.iter().find_map(|r| {
        if r.method != method {
            return None;
        }
        match_template(r.path, path).map(|id| (r, id))
    })
}

/// Turns one HTTP request into an [`ApiRequest`], or the error the client
/// is answered with. `path` may carry a query string, which is ignored.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let Some((route, id)) = find_route(method, path) else {
        return Err(ApiError::InvalidRoute {
            method: method.to_string(),
            path: path.to_string(),
        });
    };
    let has_body = !body.iter().all(|b| b.is_ascii_whitespace());
    match (route.body, has_body) {
        (BodyRule::None, true) => {
            return Err(ApiError::UnexpectedBody {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
        (BodyRule::Required, false) => {
            return Err(ApiError::EmptyBody {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
        _ => {}
    }
    let id = id.unwrap_or("");
    Ok(match route.op {
        Op::DescribeInstance => ApiRequest::DescribeInstance,
        Op::CreateSyncAction => ApiRequest::CreateSyncAction(parse_json("action", body)?),
        Op::DescribeBalloonConfig => ApiRequest::DescribeBalloonConfig,
        Op::PutBalloon => ApiRequest::PutBalloon(parse_json("balloon", body)?),
        Op::PatchBalloon => ApiRequest::PatchBalloon(parse_json("balloon update", body)?),
        Op::DescribeBalloonStats => ApiRequest::DescribeBalloonStats,
        Op::PatchBalloonStatsInterval => {
            ApiRequest::PatchBalloonStatsInterval(parse_json("balloon statistics update", body)?)
        }
        Op::StartBalloonHinting => ApiRequest::StartBalloonHinting(if has_body {
            parse_json("balloon hinting start", body)?
        } else {
            BalloonStartCmd::default()
        }),
        Op::DescribeBalloonHinting => ApiRequest::DescribeBalloonHinting,
        Op::StopBalloonHinting => ApiRequest::StopBalloonHinting,
        Op::PutBootSource => ApiRequest::PutBootSource(parse_json("boot source", body)?),
        Op::PutCpuConfig => ApiRequest::PutCpuConfig(parse_json("CPU config", body)?),
        Op::PutDrive => ApiRequest::PutDrive(by_id("drive_id", id, body, "drive", |d: &Drive| {
            &d.drive_id
        })?),
        Op::PatchDrive => ApiRequest::PatchDrive(by_id(
            "drive_id",
            id,
            body,
            "drive update",
            |d: &PartialDrive| &d.drive_id,
        )?),
        Op::PutPmem => ApiRequest::PutPmem(by_id("id", id, body, "pmem device", |p: &Pmem| &p.id)?),
        Op::PatchPmem => {
            ApiRequest::PatchPmem(by_id("id", id, body, "pmem update", |p: &PartialPmem| {
                &p.id
            })?)
        }
        Op::PutLogger => ApiRequest::PutLogger(parse_json("logger", body)?),
        Op::GetMachineConfig => ApiRequest::GetMachineConfig,
        Op::PutMachineConfig => {
            ApiRequest::PutMachineConfig(parse_json("machine configuration", body)?)
        }
        Op::PatchMachineConfig => {
            ApiRequest::PatchMachineConfig(parse_json("machine configuration update", body)?)
        }
        Op::PutMetrics => ApiRequest::PutMetrics(parse_json("metrics", body)?),
        Op::PutMmds => ApiRequest::PutMmds(mmds_object(body)?),
        Op::PatchMmds => ApiRequest::PatchMmds(mmds_object(body)?),
        Op::GetMmds => ApiRequest::GetMmds,
        Op::PutMmdsConfig => ApiRequest::PutMmdsConfig(parse_json("MMDS config", body)?),
        Op::PutEntropy => ApiRequest::PutEntropy(parse_json("entropy device", body)?),
        Op::PutSerial => ApiRequest::PutSerial(parse_json("serial device", body)?),
        Op::PutMemoryHotplug => {
            ApiRequest::PutMemoryHotplug(parse_json("memory hotplug config", body)?)
        }
        Op::PatchMemoryHotplug => {
            ApiRequest::PatchMemoryHotplug(parse_json("memory hotplug update", body)?)
        }
        Op::GetMemoryHotplug => ApiRequest::GetMemoryHotplug,
        Op::PutNetworkInterface => ApiRequest::PutNetworkInterface(by_id(
            "iface_id",
            id,
            body,
            "network interface",
            |n: &NetworkInterface| &n.iface_id,
        )?),
        Op::PatchNetworkInterface => ApiRequest::PatchNetworkInterface(by_id(
            "iface_id",
            id,
            body,
            "network interface update",
            |n: &PartialNetworkInterface| &n.iface_id,
        )?),
        Op::CreateSnapshot => ApiRequest::CreateSnapshot(parse_json("snapshot create", body)?),
        Op::LoadSnapshot => ApiRequest::LoadSnapshot(parse_json("snapshot load", body)?),
        Op::GetVersion => ApiRequest::GetVersion,
        Op::PatchVm => ApiRequest::PatchVm(parse_json("vm state", body)?),
        Op::GetVmConfig => ApiRequest::GetVmConfig,
        Op::GetVmMemory => ApiRequest::GetVmMemory,
        Op::PutVsock => ApiRequest::PutVsock(parse_json("vsock", body)?),
    })
}

/// A body for a path with an id: checks the path id, parses the body and
/// requires the body's id (`body_id`) to be the path's.
fn by_id<T: serde::de::DeserializeOwned + Validate>(
    field: &'static str,
    path_id: &str,
    body: &[u8],
    resource: &'static str,
    body_id: impl Fn(&T) -> &str,
) -> Result<T, ApiError> {
    check_id(field, path_id).map_err(|e| ApiError::InvalidPathId {
        what: field,
        reason: format!("{}: {}", e.field, e.reason),
    })?;
    let value: T = parse_json(resource, body)?;
    if body_id(&value) != path_id {
        return Err(ApiError::IdMismatch {
            field,
            path_id: path_id.to_string(),
            body_id: body_id(&value).to_string(),
        });
    }
    Ok(value)
}

/// MMDS contents: any JSON object.
fn mmds_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody {
        resource: "MMDS contents",
        message: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(ApiError::InvalidBody {
            resource: "MMDS contents",
            message: "must be a JSON object".to_string(),
        });
    }
    Ok(value)
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
