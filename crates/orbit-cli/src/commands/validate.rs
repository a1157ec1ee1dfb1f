//! `orbit validate FILE`

use orbit_core::dag::Dag;
use orbit_core::file::{FileError, parse_pipeline_with_warnings};
use serde_json::json;
use std::path::Path;

pub fn validate(path: &Path, json: bool) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::BadInput(format!("cannot read {}: {e}", path.display())))?;
    let shown = path.display().to_string();
    match parse_pipeline_with_warnings(&shown, &text) {
        Ok((p, warnings)) => {
            let dag = Dag::new(&p)?;
            let layers: Vec<Vec<&str>> = dag
                .layers()
                .iter()
                .map(|l| l.iter().map(|&i| dag.name(i)).collect())
                .collect();
            if json {
                let warnings: Vec<_> = warnings
                    .iter()
                    .map(|d| json!({"file": shown, "line": d.line, "column": d.column, "message": d.message}))
                    .collect();
                crate::output::json(
                    &json!({"ok": true, "pipeline": p.name, "tasks": p.tasks.len(), "layers": layers, "warnings": warnings}),
                )?;
            } else {
                for w in &warnings {
                    eprintln!("{shown}:{}:{}: warning: {}", w.line, w.column, w.message);
                }
                println!(
                    "ok: pipeline `{}`: {} tasks in {} layers",
                    p.name,
                    p.tasks.len(),
                    layers.len()
                );
                for (i, layer) in layers.iter().enumerate() {
                    println!("  {}: {}", i + 1, layer.join(", "));
                }
            }
            Ok(0)
        }
        Err(FileError { path, diagnostics }) => {
            if json {
                let errors: Vec<_> = diagnostics
                    .iter()
                    .map(|d| json!({"file": path, "line": d.line, "column": d.column, "message": d.message}))
                    .collect();
                crate::output::json(&json!({"ok": false, "errors": errors}))?;
            } else {
                eprint!(
                    "{}",
                    FileError {
                        path,
                        diagnostics: diagnostics.clone()
                    }
                );
                eprintln!();
                eprintln!(
                    "{} error{} found",
                    diagnostics.len(),
                    if diagnostics.len() == 1 { "" } else { "s" }
                );
            }
            Ok(2)
        }
    }
}
