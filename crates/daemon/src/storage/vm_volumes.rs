//! Deleting a VM together with its volumes (`DELETE /api/v1/vms/{name}?volumes=delete`): the
//! volumes its disks name are checked first — none may be used by another VM, back a linked
//! clone or be written by a task — so a refused request deletes nothing.

use paddock_api::Vm;

use super::{store::VolumeRow, users_of, Storage};
use crate::error::OpError;

impl Storage {
    /// The volumes `vm`'s disks name, each checked deletable once `vm` is gone.
    pub fn volumes_to_delete_with(&self, vm: &Vm) -> Result<Vec<VolumeRow>, OpError> {
        let mut out: Vec<VolumeRow> = Vec::new();
        for d in &vm.spec.disks {
            let Some((pool, name)) = d.volume.as_deref().and_then(|r| r.split_once('/')) else {
                continue;
            };
            if out.iter().any(|v| v.pool == pool && v.name == name) {
                continue;
            }
            // A volume deleted by hand meanwhile: nothing to delete.
            let Some(v) = self.db().volume(pool, name)? else {
                continue;
            };
            let p = self.pool_row(pool)?;
            if let Some(t) = v.task {
                return Err(OpError::Conflict(format!(
                    "task {t} is writing volume '{pool}/{name}'; wait for it or cancel it first"
                )));
            }
            if let Some(other) = users_of(self.sup.store(), &p, name)?
                .into_iter()
                .find(|u| *u != vm.name)
            {
                return Err(OpError::Conflict(format!(
                    "volume '{pool}/{name}' is also used by VM '{other}'; delete without \
                     volumes=delete to keep it"
                )));
            }
            if let Some(c) = self.clone_of(&v)? {
                return Err(OpError::Conflict(format!(
                    "volume '{pool}/{name}' backs linked clone '{c}'; delete without \
                     volumes=delete to keep it"
                )));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Deletes volumes returned by [`Storage::volumes_to_delete_with`] (their VM gone).
    pub fn delete_checked_volumes(&self, volumes: &[VolumeRow]) -> Result<(), OpError> {
        for v in volumes {
            self.delete_volume(&v.pool, &v.name)?;
        }
        Ok(())
    }
}
