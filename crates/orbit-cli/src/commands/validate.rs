//! `orbit validate FILE`

use orbit_core::dag::Dag;
use orbit_core::file::{FileError, parse_pipeline};
use serde_json::json;
use std::path::Path;

pub fn validate(path: &Path, json: bool) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::BadInput(format!("cannot read {}: {e}", path.display())))?;
    match parse_pipeline(&path.display().to_string(), &text) {
        Ok(p) => {
            let dag = Dag::new(&p)?;
            let layers: Vec<Vec<&str>> = dag
                .layers()
                .iter()
                .map(|l| l.iter().map(|&i| dag.name(i)).collect())
                .collect();
            if json {
                crate::output::json(
                    &json!({"ok": true, "pipeline": p.name, "tasks": p.tasks.len(), "layers": layers}),
                )?;
            } else {
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
