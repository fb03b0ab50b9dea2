//! A minimal HWP server, as in the seed's usage section: it accepts worker
//! registrations, job assignments, log streams and cancels, and keeps them in
//! memory. The real orchestrator is `hodei server`; this example shows the
//! generated server API on its own.
//!
//! Run: `cargo run -p hwp-proto --example server -- 127.0.0.1:50061`
//! then `cargo run -p hwp-proto --example client -- http://127.0.0.1:50061`.

use std::collections::HashMap;
use std::sync::Mutex;

use hwp_proto::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use hwp_proto::pb::{
    AssignJobRequest, CancelJobRequest, Empty, JobAccepted, LogEntry, WorkerRegistration,
    WorkerStatus,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct MyWorkerService {
    workers: Mutex<HashMap<String, Vec<String>>>,
    jobs: Mutex<HashMap<String, (AssignJobRequest, Vec<String>)>>,
}

#[tonic::async_trait]
impl WorkerService for MyWorkerService {
    async fn register_worker(
        &self,
        request: Request<WorkerRegistration>,
    ) -> Result<Response<WorkerStatus>, Status> {
        let reg = request.into_inner();
        if reg.worker_id.is_empty() {
            return Err(Status::invalid_argument("worker_id must not be empty"));
        }
        println!("register_worker {} {:?}", reg.worker_id, reg.capabilities);
        self.workers
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?
            .insert(reg.worker_id.clone(), reg.capabilities);
        Ok(Response::new(WorkerStatus {
            worker_id: reg.worker_id,
            state: "ready".to_string(),
            ..Default::default()
        }))
    }

    async fn assign_job(
        &self,
        request: Request<AssignJobRequest>,
    ) -> Result<Response<JobAccepted>, Status> {
        let job = request.into_inner();
        println!("assign_job {} {:?}", job.job_id, job.command);
        let job_id = job.job_id.clone();
        self.jobs
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?
            .insert(job_id.clone(), (job, Vec::new()));
        Ok(Response::new(JobAccepted {
            job_id,
            ..Default::default()
        }))
    }

    async fn stream_logs(
        &self,
        request: Request<tonic::Streaming<LogEntry>>,
    ) -> Result<Response<Empty>, Status> {
        let mut stream = request.into_inner();
        while let Some(entry) = stream.next().await {
            let entry = entry?;
            println!("log {}: {}", entry.job_id, entry.data);
            let mut jobs = self
                .jobs
                .lock()
                .map_err(|_| Status::internal("lock poisoned"))?;
            let (_, lines) = jobs
                .get_mut(&entry.job_id)
                .ok_or_else(|| Status::not_found(format!("job {} not found", entry.job_id)))?;
            lines.push(entry.data);
        }
        Ok(Response::new(Empty {}))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        println!("cancel_job {}", req.job_id);
        let removed = self
            .jobs
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?
            .remove(&req.job_id);
        match removed {
            Some(_) => Ok(Response::new(Empty {})),
            None => Err(Status::not_found(format!("job {} not found", req.job_id))),
        }
    }

    type AttachStream = tokio_stream::Empty<Result<hwp_proto::pb::ServerMessage, Status>>;

    async fn attach(
        &self,
        _request: Request<tonic::Streaming<hwp_proto::pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented(
            "this example serves only the seed RPCs; `hodei server` implements Attach",
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_string())
        .parse()?;
    println!("example HWP server on {addr}");
    tonic::transport::Server::builder()
        .add_service(WorkerServiceServer::new(MyWorkerService::default()))
        .serve(addr)
        .await?;
    Ok(())
}
