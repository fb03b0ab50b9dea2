//! One job writing N bytes of 64-byte lines: MB/s from its start to the
//! last byte stored, and to the last byte received by a live follower;
//! baseline: the same command writing to a file on the same disk, then
//! `sync`.

use std::time::{Duration, Instant};

use anyhow::bail;
use hodei_client::FollowEvent;
use hodei_core::JobState;

use super::Plan;
use super::report::{Report, round3};
use super::rig::{Rig, job};

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let bytes = plan.bytes;
    let rig = Rig::start(plan.slots).await?;
    let script = format!(
        "yes 'hodei log throughput line, sixty-four bytes long.........' | head -c {bytes}"
    );
    let start = Instant::now();
    let id = rig
        .client
        .submit(&job(&["sh", "-c", &script]))
        .await?
        .job
        .id;
    let mut received: u64 = 0;
    let mut first_byte = None;
    let mut contiguous = true;
    let end = rig
        .client
        .follow(&id, Duration::from_secs(30), |ev| {
            if let FollowEvent::Log { data, offset, .. } = ev {
                first_byte.get_or_insert_with(|| start.elapsed());
                contiguous &= offset == received;
                received += data.len() as u64;
            }
        })
        .await?;
    let at_follower = start.elapsed();
    if end.state != JobState::Succeeded {
        bail!(
            "logs job ended {} with {received} of {bytes} bytes",
            end.state
        );
    }
    let job = rig.client.job(&id).await?;
    let stored_ms =
        (job.finished_at.unwrap_or_default() - job.started_at.unwrap_or_default()).max(1);
    rig.shutdown().await;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("out");
    let t = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args([
            "-c",
            &format!("{script} > {}; sync {}", file.display(), file.display()),
        ])
        .status()
        .await?;
    if !status.success() {
        bail!("baseline command failed");
    }
    let base = t.elapsed();
    let mb = bytes as f64 / 1e6;
    let follower_s = (at_follower - first_byte.unwrap_or_default()).as_secs_f64();
    let follower_rate = mb / follower_s.max(1e-6);
    let stored_rate = mb / (stored_ms as f64 / 1000.0);
    let base_rate = mb / base.as_secs_f64();
    let ratio = round3(follower_rate.min(stored_rate) / base_rate);
    let lost = bytes.saturating_sub(received);
    let mut r = Report::new("logs");
    r.set("bytes", bytes);
    r.set("stored_mb_per_s", stored_rate.round());
    r.set("follower_mb_per_s", follower_rate.round());
    r.set("baseline_file_mb_per_s", base_rate.round());
    r.set("ratio_to_baseline", ratio);
    r.set("lost_bytes", lost);
    r.sane(
        lost == 0 && received == bytes && contiguous,
        format!("received {received} of {bytes} bytes (in order: {contiguous})"),
    );
    r.sane(follower_rate > 0.0 && stored_rate > 0.0, "a rate of zero");
    r.target(
        "end_to_end_mb_per_s",
        follower_rate.min(stored_rate).round(),
        true,
        300.0,
    );
    r.target("ratio_to_baseline", ratio, true, 0.5);
    r.target("lost_bytes", lost as f64, false, 0.0);
    Ok(r)
}
