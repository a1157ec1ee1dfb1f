//! `orbit graph PIPELINE`: the DAG as layers, each task with what it needs.

use super::{is_file_argument, load_file, open_store, saved_pipeline};
use orbit_core::Pipeline;
use orbit_core::dag::Dag;
use serde_json::json;
use std::path::Path;

pub async fn graph(url: &str, arg: &str, json: bool) -> anyhow::Result<u8> {
    let pipeline: Pipeline = if is_file_argument(arg) {
        load_file(Path::new(arg))?.0
    } else {
        saved_pipeline(open_store(url).await?.as_ref(), arg)
            .await?
            .pipeline
    };
    render_pipeline(&pipeline, json)
}

/// `orbit graph`, for a pipeline from a file, the store or a server.
pub fn render_pipeline(pipeline: &Pipeline, json: bool) -> anyhow::Result<u8> {
    let dag = Dag::new(pipeline)?;
    let layers = dag.layers();
    if json {
        let nodes: Vec<_> = pipeline
            .tasks
            .iter()
            .map(|t| json!({"name": t.name, "type": t.task_type, "needs": t.needs}))
            .collect();
        let layers: Vec<Vec<&str>> = layers
            .iter()
            .map(|l| l.iter().map(|&i| dag.name(i)).collect())
            .collect();
        crate::output::json(&json!({"pipeline": pipeline.name, "tasks": nodes, "layers": layers}))?;
        return Ok(0);
    }
    print!("{}", render(pipeline, &dag));
    Ok(0)
}

/// Draws the layers top to bottom; a task lists the tasks it waits for.
pub fn render(pipeline: &Pipeline, dag: &Dag) -> String {
    let layers = dag.layers();
    let mut out = format!(
        "{} ({} tasks, {} layers)\n",
        pipeline.name,
        pipeline.tasks.len(),
        layers.len()
    );
    for (depth, layer) in layers.iter().enumerate() {
        out.push_str("  │\n");
        for (k, &i) in layer.iter().enumerate() {
            let task = &pipeline.tasks[i];
            let branch = if layer.len() == 1 {
                "●"
            } else if k == 0 {
                "┬"
            } else if k + 1 == layer.len() {
                "└"
            } else {
                "├"
            };
            let needs = if task.needs.is_empty() {
                String::new()
            } else {
                format!("  ◀ {}", task.needs.join(", "))
            };
            let lead = if k == 0 {
                format!("{:>2}", depth + 1)
            } else {
                "  ".into()
            };
            out.push_str(&format!(
                "{lead}{branch} {} [{}]{needs}\n",
                task.name, task.task_type
            ));
        }
    }
    out
}
