//! The origin pools on the admin listener: `GET /origins` lists every configured pool's
//! members and their state; `POST /origins/{pool}/{server}?state=drain|enable` takes a
//! member (named by its `host:port`) out of rotation or puts it back, at once and without
//! a reload. A drained member finishes what it has in flight and gets nothing new.

use std::time::Instant;

use http::StatusCode;

use crate::pipeline::Proxy;

/// Every configured pool, its selection and its members, as JSON.
pub fn list(proxy: &Proxy) -> serde_json::Value {
    let now = Instant::now();
    let pools: Vec<serde_json::Value> = proxy
        .pools()
        .configured()
        .map(|pool| {
            let members: Vec<serde_json::Value> = pool
                .members()
                .iter()
                .map(|member| {
                    serde_json::json!({
                        "server": member.server,
                        "address": member.address,
                        "state": member.state(now),
                        "weight": member.weight,
                        "backup": member.backup,
                        "outstanding": member.outstanding(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": pool.name,
                "selection": pool.config().selection,
                "members": members,
            })
        })
        .collect();
    serde_json::Value::Array(pools)
}

/// `POST /origins/{pool}/{server}?state=drain|enable`: the status and JSON answer.
pub fn steer(proxy: &Proxy, path: &str, query: &str) -> (StatusCode, serde_json::Value) {
    let Some((pool_name, address)) = path
        .strip_prefix("/origins/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return bad("POST /origins/{pool}/{host:port}?state=drain|enable");
    };
    let state = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "state")
        .map(|(_, value)| value.into_owned());
    let drained = match state.as_deref() {
        Some("drain") => true,
        Some("enable") => false,
        _ => return bad("give state=drain or state=enable"),
    };
    let Some(pool) = proxy.pools().named(pool_name) else {
        return (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no pool named `{pool_name}`")}),
        );
    };
    if !pool.set_drained(address, drained) {
        return (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("pool `{pool_name}` has no server at `{address}`")}),
        );
    }
    tracing::info!(pool = %pool_name, server = %address, drained, "pool member steered");
    let state = if drained { "drained" } else { "enabled" };
    (
        StatusCode::OK,
        serde_json::json!({"pool": pool_name, "server": address, "state": state}),
    )
}

fn bad(message: &str) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": message}),
    )
}
