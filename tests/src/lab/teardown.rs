//! Tearing a lab down: servers, processes, cgroups, network namespaces.

use leash_records::error::Chain;

use super::Lab;
use crate::sys;

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.stop_all();
        if self.cgroup_created
            && let Err(e) = sys::remove_cgroup_tree(&self.cgroup_root)
        {
            tracing::warn!("lab {}: removing cgroups: {e}", self.id, e = Chain(&e));
            eprintln!(
                "leash-lab {}: removing cgroups: {e}",
                self.id,
                e = Chain(&e)
            );
        }
        for ns in &self.netns_created {
            if let Err(e) = sys::delete_netns(ns) {
                tracing::warn!("lab {}: deleting netns {ns}: {e}", self.id, e = Chain(&e));
                eprintln!(
                    "leash-lab {}: deleting netns {ns}: {e}",
                    self.id,
                    e = Chain(&e)
                );
            }
        }
    }
}
