//! `concord bench --quick --json`: the smoke run CI makes. It checks the report, not the
//! speed (these machines are shared): every figure the README quotes is there, finite
//! and positive, with its unit, for Concord and for every peer, and the plots are drawn.

use std::process::Command;

use concord_tests::{TempDir, concord_bin, free_cluster_offset, repo_root};
use serde_json::Value;

/// Figures every run reports (issue 12 names them), and the peers it compares with.
const RESULTS: [&str; 16] = [
    "write_throughput_async",
    "write_throughput_region",
    "write_throughput_async_nats",
    "write_throughput_async_3regions",
    "write_throughput_remote",
    "write_throughput_all",
    "write_latency_p50_ms",
    "write_latency_p99_ms",
    "read_throughput",
    "lag_p99_ms",
    "catchup_changes_per_s",
    "catchup_backlog_changes",
    "heal_to_converged_s",
    "doc_merge_changes_per_s",
    "resident_memory_mib",
    "resident_memory_keys",
];
const PEERS: [&str; 5] = ["redis_set", "redis_set_fsync", "redis_get", "nats_kv_put", "nats_kv_put_fsync"];

#[test]
fn bench_quick_reports_every_figure_and_peer() {
    let dir = TempDir::new("bench");
    let json = dir.0.join("bench.json");
    let plots = dir.0.join("plots");
    let offset = free_cluster_offset(3).to_string();
    let out = Command::new(concord_bin())
        .args(["bench", "--quick", "--json"])
        .arg(&json)
        .arg("--plots")
        .arg(&plots)
        .arg("--dir")
        .arg(dir.0.join("data"))
        .args(["--port-offset", &offset])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "concord bench --quick failed:\n{stderr}\n{stdout}");
    assert!(stdout.contains("targets (issue 12):"), "the table ends with the targets:\n{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for (list, names) in [("results", &RESULTS[..]), ("peers", &PEERS[..])] {
        let figures = report[list].as_array().unwrap_or_else(|| panic!("no {list} array in {report}"));
        for f in figures {
            let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["name", "unit", "value"], "each figure is name, value, unit: {f}");
        }
        for name in names {
            let f = figures.iter().find(|f| f["name"] == *name).unwrap_or_else(|| panic!("{list} lack {name}"));
            let value = f["value"].as_f64().unwrap_or_else(|| panic!("{name}: value is no number: {f}"));
            assert!(value.is_finite() && value > 0.0, "{name} = {value}: a run that measured nothing");
            assert!(!f["unit"].as_str().unwrap().is_empty(), "{name} has no unit");
        }
    }
    // The backlog was written while the region was cut off, and applied after the heal.
    let get = |name: &str| {
        report["results"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap()["value"].as_f64().unwrap()
    };
    assert!(get("catchup_backlog_changes") >= 5_000.0, "the quick backlog is 5,000 writes");
    assert!(get("lag_p99_ms") >= get("lag_p50_ms"));
    for plot in ["lag.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(plots.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{plot} is an SVG");
    }
    assert!(stderr.contains("ops/s"), "progress is shown while it runs:\n{stderr}");
}
