//! A minimal HWP client, as in the seed's usage section: register a worker,
//! assign a job, stream log lines, cancel the job. Works against the example
//! server and against a real `hodei server`.
//!
//! Run: `cargo run -p hwp-proto --example client -- http://127.0.0.1:50051`

use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use hwp_proto::pb::{AssignJobRequest, CancelJobRequest, LogEntry, WorkerRegistration};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:50051".to_string());
    let mut client = WorkerServiceClient::connect(url).await?;

    // Register worker
    let response = client
        .register_worker(WorkerRegistration {
            worker_id: "worker-1".to_string(),
            capabilities: vec!["docker".to_string()],
            ..Default::default()
        })
        .await?;
    let status = response.into_inner();
    println!("Worker status: {}", status.state);

    // Assign job
    let job_id = format!("job-{}", std::process::id());
    let response = client
        .assign_job(AssignJobRequest {
            job_id: job_id.clone(),
            name: "build-app".to_string(),
            image: "rust:1.70".to_string(),
            command: vec!["cargo".to_string(), "build".to_string()],
            ..Default::default()
        })
        .await?;
    let accepted = response.into_inner();
    println!("Job accepted: {}", accepted.job_id);

    // Stream logs (client streaming)
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for line in ["Building application...", "Compiling hodei v0.1.0"] {
        tx.send(LogEntry {
            job_id: job_id.clone(),
            data: format!("{line}\n"),
            ..Default::default()
        })
        .await?;
    }
    drop(tx);
    client
        .stream_logs(tonic::Request::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await?;
    println!("Logs streamed");

    // Cancel job
    client
        .cancel_job(CancelJobRequest {
            job_id: job_id.clone(),
            ..Default::default()
        })
        .await?;
    println!("Job cancelled: {job_id}");
    Ok(())
}
