//! [`Client`] methods for storage pools, volumes and tasks.

use uuid::Uuid;

use crate::client::{segment, Client, ClientError};
use crate::storage::{
    CloneOutcome, Pool, PoolRequest, Task, TaskAccepted, Volume, VolumeClone, VolumeCreate,
    VolumeImport, VolumeResize,
};

fn body(socket: &std::path::Path, v: &impl serde::Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(v).map_err(|e| ClientError::Protocol {
        socket: socket.to_path_buf(),
        message: e.to_string(),
    })
}

fn volumes_path(pool: &str) -> String {
    format!("/api/v1/pools/{}/volumes", segment(pool))
}

fn volume_path(pool: &str, volume: &str) -> String {
    format!("{}/{}", volumes_path(pool), segment(volume))
}

impl Client {
    /// Defines a directory pool (the directory is made when absent).
    pub fn define_pool(&self, req: &PoolRequest) -> Result<Pool, ClientError> {
        let b = body(self.socket(), req)?;
        self.json("POST", "/api/v1/pools", Some(&b))
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Result<Vec<Pool>, ClientError> {
        self.json("GET", "/api/v1/pools", None)
    }

    /// One pool.
    pub fn pool(&self, name: &str) -> Result<Pool, ClientError> {
        self.json("GET", &format!("/api/v1/pools/{}", segment(name)), None)
    }

    /// Forgets an empty pool (its directory stays).
    pub fn delete_pool(&self, name: &str) -> Result<(), ClientError> {
        self.raw("DELETE", &format!("/api/v1/pools/{}", segment(name)), None)
            .map(drop)
    }

    /// The volumes of `pool`, by name.
    pub fn volumes(&self, pool: &str) -> Result<Vec<Volume>, ClientError> {
        self.json("GET", &volumes_path(pool), None)
    }

    /// One volume.
    pub fn volume(&self, pool: &str, name: &str) -> Result<Volume, ClientError> {
        self.json("GET", &volume_path(pool, name), None)
    }

    /// Creates an empty volume.
    pub fn create_volume(&self, pool: &str, req: &VolumeCreate) -> Result<Volume, ClientError> {
        let b = body(self.socket(), req)?;
        self.json("POST", &volumes_path(pool), Some(&b))
    }

    /// Starts importing a host image into a new volume; answers the task.
    pub fn import_volume(&self, pool: &str, req: &VolumeImport) -> Result<Task, ClientError> {
        let b = body(self.socket(), req)?;
        let a: TaskAccepted =
            self.json("POST", &format!("{}/import", volumes_path(pool)), Some(&b))?;
        Ok(a.task)
    }

    /// Clones a volume: a linked clone at once, or a task for a full copy.
    pub fn clone_volume(&self, pool: &str, req: &VolumeClone) -> Result<CloneOutcome, ClientError> {
        let b = body(self.socket(), req)?;
        self.json("POST", &format!("{}/clone", volumes_path(pool)), Some(&b))
    }

    /// Changes a volume's virtual size.
    pub fn resize_volume(
        &self,
        pool: &str,
        name: &str,
        req: &VolumeResize,
    ) -> Result<Volume, ClientError> {
        let b = body(self.socket(), req)?;
        self.json(
            "POST",
            &format!("{}/resize", volume_path(pool, name)),
            Some(&b),
        )
    }

    /// Deletes a volume and its file.
    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<(), ClientError> {
        self.raw("DELETE", &volume_path(pool, name), None).map(drop)
    }

    /// Every task, newest first.
    pub fn tasks(&self) -> Result<Vec<Task>, ClientError> {
        self.json("GET", "/api/v1/tasks", None)
    }

    /// One task.
    pub fn task(&self, id: Uuid) -> Result<Task, ClientError> {
        self.json("GET", &format!("/api/v1/tasks/{id}"), None)
    }

    /// Cancels a running task and answers it once it has stopped.
    pub fn cancel_task(&self, id: Uuid) -> Result<Task, ClientError> {
        self.json("POST", &format!("/api/v1/tasks/{id}/cancel"), None)
    }
}
