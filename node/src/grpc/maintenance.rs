//! etcd's `Maintenance` service, of which raftkv serves `Status` (what
//! `etcdctl endpoint status` shows). The other calls (alarms, defragment,
//! hashes, snapshots, move-leader, downgrade) are not declared, so the
//! server answers them UNIMPLEMENTED.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{status_from, status_response};
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};

/// The Maintenance service over a node.
#[derive(Debug, Clone)]
pub struct MaintenanceService<B> {
    backend: B,
    observer: Observer,
}

impl<B: Backend> MaintenanceService<B> {
    pub fn new(backend: B, observer: Observer) -> Self {
        MaintenanceService { backend, observer }
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::StatusResponse>, Status> = async {
            let status = self.backend.status().await.map_err(status_from)?;
            Ok(Response::new(status_response(
                &status,
                self.backend.member_id(),
            )))
        }
        .await;
        self.observer.record("Status", started, &result);
        result
    }
}
