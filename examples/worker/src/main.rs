//! The example worker service. Pull mode (default): it long-polls the orchestrator.
//! Push mode (`--push 127.0.0.1:8080`): the orchestrator POSTs each task to it.
//!
//! ```text
//! ORBIT_SECRET_KEY=... ORBIT_URL=http://127.0.0.1:3000 cargo run -p orbit-example-worker
//! ```

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // Orbit's names, or the PipeWeave seed's.
    let var = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok());
    let url = var(["ORBIT_URL", "PIPEWEAVE_ORCHESTRATOR_URL"])
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let secret = var(["ORBIT_SECRET_KEY", "PIPEWEAVE_SECRET_KEY"])
        .ok_or("set ORBIT_SECRET_KEY (or PIPEWEAVE_SECRET_KEY) to the orchestrator's key")?;
    let worker = orbit_example_worker::service(&url, &secret)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--push") {
        Some(i) => {
            let addr = args.get(i + 1).map_or("127.0.0.1:8080", String::as_str);
            let listener = tokio::net::TcpListener::bind(addr).await?;
            // Tests read this line to learn the port when binding to port 0.
            println!("worker listening on http://{}", listener.local_addr()?);
            worker.listen(listener, None, shutdown).await?;
        }
        None => {
            println!("worker polling {url}");
            worker.run(shutdown).await?;
        }
    }
    Ok(())
}
