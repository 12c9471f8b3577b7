//! etcd's `Maintenance` service, of which raftkv serves `Status` (what
//! `etcdctl endpoint status` shows). The other calls (alarms, defragment,
//! hashes, snapshots, move-leader, downgrade) are not declared, so the
//! server answers them UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{status_from, status_response};
use super::proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};

/// The Maintenance service over a node.
#[derive(Debug, Clone)]
pub struct MaintenanceService<B> {
    backend: B,
}

impl<B: Backend> MaintenanceService<B> {
    pub fn new(backend: B) -> Self {
        MaintenanceService { backend }
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.backend.status().await.map_err(status_from)?;
        Ok(Response::new(status_response(
            &status,
            self.backend.member_id(),
        )))
    }
}
