//! Writes: the fast path in place, the slow path that allocates a cluster
//! (planned under the lock, carried out without it), zeroes and trim.

use super::*;

impl Overlay {
    /// Write guest bytes (not yet durable: see `flush`). Runs of clusters
    /// go to the file in one `pwrite` each: contiguous data clusters in
    /// place, and whole new clusters allocated side by side.
    pub fn write(&self, data: &[u8], off: u64) -> Result<()> {
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let plan = {
                let mut meta = self.lock();
                loop {
                    match self.plan(&mut meta, pos, end)? {
                        Plan::Wait => meta = self.settled.wait(meta).unwrap_or_else(|p| p.into_inner()),
                        plan => break plan,
                    }
                }
            };
            let done = self.carry_out(plan, &data[(pos - off) as usize..], pos);
            // Marked once the bytes are in the file (even partly, on error),
            // so a flush that starts after this write completed syncs it.
            self.unsynced.store(true, Ordering::Release);
            pos += done?;
        }
        Ok(())
    }

    /// Make `[off, off + len)` read as zeros. Whole clusters only change
    /// metadata and, without `no_hole`, give their disk blocks back; with
    /// `no_hole`, unallocated ones get allocated. Partial clusters are
    /// written. With `fast`, a range that would need writing is refused
    /// before anything changes.
    pub fn write_zeroes(&self, off: u64, len: u64, no_hole: bool, fast: bool) -> Result<()> {
        if fast && (!off.is_multiple_of(CLUSTER) || !len.is_multiple_of(CLUSTER)) && off + len != self.size {
            return Err(StorageError::FastZeroUnsupported);
        }
        static ZEROS: [u8; CLUSTER as usize] = [0; CLUSTER as usize];
        self.for_each_cluster(off, len, |c, in_cluster, _pos, piece| {
            let whole = in_cluster == 0 && (piece == CLUSTER || c * CLUSTER + piece == self.size);
            if whole {
                return self.zero_whole_cluster(c, no_hole);
            }
            self.write(&ZEROS[..piece as usize], c * CLUSTER + in_cluster)
        })
    }

    /// TRIM: the client no longer needs `[off, off + len)`. Whole clusters
    /// read as zeros from now on and their host clusters give their disk
    /// blocks back (a hole punched in the file; the cluster stays allocated
    /// in qcow2 terms, so a later write reuses it). Partial clusters are left
    /// as they are: TRIM is advisory, and the client may not rely on what a
    /// trimmed range reads.
    pub fn trim(&self, off: u64, len: u64) -> Result<()> {
        self.for_each_cluster(off, len, |c, in_cluster, _pos, piece| {
            let whole = in_cluster == 0 && (piece == CLUSTER || c * CLUSTER + piece == self.size);
            if !whole {
                return Ok(());
            }
            self.zero_whole_cluster(c, false)
        })
    }

    /// Call `f(cluster, offset in cluster, guest position, length)` for each
    /// cluster piece of `[off, off + len)`.
    pub(super) fn for_each_cluster(&self, off: u64, len: u64, mut f: impl FnMut(u64, u64, u64, u64) -> Result<()>) -> Result<()> {
        let mut pos = off;
        while pos < off + len {
            let in_cluster = pos % CLUSTER;
            let piece = (CLUSTER - in_cluster).min(off + len - pos);
            f(pos / CLUSTER, in_cluster, pos, piece)?;
            pos += piece;
        }
        Ok(())
    }

    /// Zero a whole cluster in metadata. With `no_hole` its disk blocks stay
    /// (a hole becomes a preallocated zero cluster); without, a host cluster
    /// it has gives its blocks back to the file system (a hole punched in
    /// the file; the host cluster stays reserved, so a later write reuses
    /// it): the client let the server deallocate.
    pub(super) fn zero_whole_cluster(&self, c: u64, no_hole: bool) -> Result<()> {
        let mut meta = self.lock();
        while meta.in_flight.contains(&c) {
            meta = self.settled.wait(meta).unwrap_or_else(|p| p.into_inner());
        }
        let new = match meta.map(c) {
            ClusterMap::Data(h) | ClusterMap::ZeroAlloc(h) => ClusterMap::ZeroAlloc(h),
            _ if no_hole => {
                // Allocated but reading as zeros: reserve a host cluster and
                // give it blocks (so nothing references past the end of the
                // file), without writing any data.
                self.ensure_l2(&mut meta, c)?;
                let host = self.alloc(&mut meta)? * CLUSTER;
                if let Err(e) = sys::allocate(&self.file, host, CLUSTER) {
                    meta.release(host / CLUSTER);
                    return Err(StorageError::io("fallocate", &self.path, host, e));
                }
                ClusterMap::ZeroAlloc(host)
            }
            _ => ClusterMap::Zero,
        };
        if meta.map(c) != new {
            self.ensure_l2(&mut meta, c)?;
            meta.set(c, new);
        }
        if let (false, ClusterMap::ZeroAlloc(h)) = (no_hole, new) {
            // Under the lock: no writer can plan a fill of this cluster
            // (which would reuse `h`) until the hole is punched.
            sys::punch_hole(&self.file, h, CLUSTER).map_err(|e| StorageError::io("punch hole", &self.path, h, e))?;
        }
        Ok(())
    }

    /// Decide, under the lock, how to write from guest byte `pos` on (up to
    /// `end`): the first cluster's state picks the kind of run, and the run
    /// grows over following clusters of the same kind.
    pub(super) fn plan(&self, meta: &mut Meta, pos: u64, end: u64) -> Result<Plan> {
        let c = pos / CLUSTER;
        let in_cluster = pos % CLUSTER;
        if meta.in_flight.contains(&c) {
            return Ok(Plan::Wait);
        }
        let whole = |n: u64| (n + 1) * CLUSTER <= end;
        let from = meta.map(c);
        match from {
            ClusterMap::Data(h) => {
                let mut len = (CLUSTER - in_cluster).min(end - pos);
                let mut n = c + 1;
                while pos + len < end && !meta.in_flight.contains(&n) && meta.map(n) == ClusterMap::Data(h + (n - c) * CLUSTER) {
                    len += CLUSTER.min(end - pos - len);
                    n += 1;
                }
                Ok(Plan::InPlace { host: h + in_cluster, len })
            }
            ClusterMap::Unallocated | ClusterMap::Zero if in_cluster == 0 && whole(c) => {
                // Whole new clusters: nothing to copy from below.
                self.ensure_l2(meta, c)?;
                let mut hosts = vec![self.alloc(meta)? * CLUSTER];
                meta.in_flight.insert(c);
                let mut n = c + 1;
                while whole(n) && !meta.in_flight.contains(&n) && matches!(meta.map(n), ClusterMap::Unallocated | ClusterMap::Zero) {
                    // A failure here ends the run; the next plan reports it.
                    if self.ensure_l2(meta, n).is_err() {
                        break;
                    }
                    let Ok(host) = self.alloc(meta) else { break };
                    hosts.push(host * CLUSTER);
                    meta.in_flight.insert(n);
                    n += 1;
                }
                Ok(Plan::Fresh { first: c, hosts })
            }
            _ => {
                let (host, fresh) = match from {
                    ClusterMap::ZeroAlloc(h) => (h, false),
                    _ => {
                        self.ensure_l2(meta, c)?;
                        (self.alloc(meta)? * CLUSTER, true)
                    }
                };
                meta.in_flight.insert(c);
                Ok(Plan::Fill { from, host, fresh })
            }
        }
    }

    /// Do the I/O of a plan made by `plan`; returns the guest bytes written.
    pub(super) fn carry_out(&self, plan: Plan, data: &[u8], pos: u64) -> Result<u64> {
        let io = |e, at| StorageError::io("write", &self.path, at, e);
        match plan {
            Plan::Wait => Ok(0),
            Plan::InPlace { host, len } => {
                self.file.write_all_at(&data[..len as usize], host).map_err(|e| io(e, host))?;
                Ok(len)
            }
            Plan::Fill { from, host, fresh } => {
                let c = pos / CLUSTER;
                let in_cluster = pos % CLUSTER;
                let len = (CLUSTER - in_cluster).min(data.len() as u64);
                let result = self.fill_cluster(c, from, host, in_cluster, &data[..len as usize]);
                self.settle(c, &[host], result.is_ok(), fresh);
                result.map(|()| len)
            }
            Plan::Fresh { first, hosts } => {
                // One pwrite per stretch of contiguous host clusters.
                let mut result = Ok(());
                let mut i = 0;
                while i < hosts.len() && result.is_ok() {
                    let mut j = i + 1;
                    while j < hosts.len() && hosts[j] == hosts[j - 1] + CLUSTER {
                        j += 1;
                    }
                    let bytes = &data[i * CLUSTER as usize..j * CLUSTER as usize];
                    result = self.file.write_all_at(bytes, hosts[i]).map_err(|e| io(e, hosts[i]));
                    i = j;
                }
                self.settle(first, &hosts, result.is_ok(), true);
                result.map(|()| hosts.len() as u64 * CLUSTER)
            }
        }
    }

    /// Publish (or, after a failed write, give back) the host clusters of
    /// guest clusters `first..` and wake writers waiting on them.
    pub(super) fn settle(&self, first: u64, hosts: &[u64], ok: bool, fresh: bool) {
        let mut meta = self.lock();
        for (k, &host) in hosts.iter().enumerate() {
            let c = first + k as u64;
            meta.in_flight.remove(&c);
            if ok {
                meta.set(c, ClusterMap::Data(host));
            } else if fresh {
                meta.release(host / CLUSTER);
            }
        }
        drop(meta);
        self.settled.notify_all();
    }

    /// Write the whole of cluster `c` at `host`: its current content (from
    /// the base, or zeros) with `data` laid over it at `in_cluster`.
    pub(super) fn fill_cluster(&self, c: u64, from: ClusterMap, host: u64, in_cluster: u64, data: &[u8]) -> Result<()> {
        let guest = c * CLUSTER;
        let valid = CLUSTER.min(self.size - guest) as usize;
        let mut buf = vec![0u8; CLUSTER as usize];
        if from == ClusterMap::Unallocated {
            self.base.read_beyond_end_as_zero(&mut buf[..valid], guest)?;
        }
        buf[in_cluster as usize..in_cluster as usize + data.len()].copy_from_slice(data);
        self.file.write_all_at(&buf, host).map_err(|e| StorageError::io("write", &self.path, host, e))
    }

    /// Make sure the L2 table covering guest cluster `c` exists.
    pub(super) fn ensure_l2(&self, meta: &mut Meta, c: u64) -> Result<()> {
        let l1i = (c / L2_ENTRIES) as usize;
        if meta.l1[l1i] == 0 {
            let host = self.alloc_metadata(meta)?;
            meta.l1[l1i] = host;
            meta.l2[l1i] = Some(vec![0u64; L2_ENTRIES as usize].into_boxed_slice());
            meta.dirty_l1 = true;
            meta.dirty_l2.insert(l1i);
        }
        Ok(())
    }

    /// Take the next free cluster (refcount 0 -> 1), starting a new refcount
    /// block first when the cluster is not covered yet.
    pub(super) fn alloc(&self, meta: &mut Meta) -> Result<u64> {
        loop {
            let c = meta.next_free;
            if c >= self.max_clusters {
                return Err(StorageError::OverlayFull { path: self.path.clone(), max_clusters: self.max_clusters });
            }
            let b = (c / REFCOUNTS_PER_BLOCK) as usize;
            meta.next_free += 1;
            if meta.refblocks[b].is_none() {
                // The new block lives in cluster `c` and counts itself.
                if let Err(e) = sys::allocate(&self.file, c * CLUSTER, CLUSTER) {
                    meta.next_free -= 1;
                    return Err(StorageError::io("allocate refcount block", &self.path, c * CLUSTER, e));
                }
                meta.refblocks[b] = Some(vec![0u16; REFCOUNTS_PER_BLOCK as usize].into_boxed_slice());
                meta.refcount_table[b] = c * CLUSTER;
                meta.dirty_refcount_table = true;
                meta.set_refcount(c, 1);
                continue;
            }
            meta.set_refcount(c, 1);
            return Ok(c);
        }
    }

    /// A cluster for metadata (an L2 table), with disk blocks: a full disk
    /// shows up here, at the write that needs the table, not at a flush.
    pub(super) fn alloc_metadata(&self, meta: &mut Meta) -> Result<u64> {
        let host = self.alloc(meta)? * CLUSTER;
        if let Err(e) = sys::allocate(&self.file, host, CLUSTER) {
            meta.release(host / CLUSTER);
            return Err(StorageError::io("allocate L2 table", &self.path, host, e));
        }
        Ok(host)
    }
}
