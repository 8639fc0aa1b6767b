//! FLUSH: the metadata reaches the file in the crash-safe order the design
//! notes in `mod.rs` give, each step synced before the next.

use super::*;

impl Overlay {
    /// Make every write that completed before this call durable, writing
    /// metadata in crash-safe order (see the module notes).
    pub fn flush(&self) -> Result<()> {
        let _serial = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before the sync: a write completing after this point sets
        // the flag again and is synced by the next flush.
        let data_written = self.unsynced.swap(false, Ordering::AcqRel);
        let snap = self.snapshot();
        let result = self.write_snapshot(&snap, data_written);
        if result.is_err() {
            // Put the metadata back as dirty so the next flush retries it.
            let mut meta = self.lock();
            meta.dirty_refblocks.extend(snap.refblocks.iter().map(|(i, _, _)| *i));
            meta.dirty_l2.extend(snap.l2.iter().map(|(i, _, _)| *i));
            meta.dirty_l1 |= snap.l1.is_some();
            meta.dirty_refcount_table |= snap.refcount_table.is_some();
            self.unsynced.store(true, Ordering::Release);
        }
        result
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut meta = self.lock();
        let mut s = Snapshot::default();
        for b in std::mem::take(&mut meta.dirty_refblocks) {
            if let Some(block) = &meta.refblocks[b] {
                let bytes = block.iter().flat_map(|r| r.to_be_bytes()).collect();
                s.refblocks.push((b, meta.refcount_table[b], bytes));
            }
        }
        if std::mem::take(&mut meta.dirty_refcount_table) {
            s.refcount_table = Some(to_be_bytes64(&meta.refcount_table));
        }
        for i in std::mem::take(&mut meta.dirty_l2) {
            if let Some(t) = &meta.l2[i] {
                s.l2.push((i, meta.l1[i], to_be_bytes64(t)));
            }
        }
        if std::mem::take(&mut meta.dirty_l1) {
            let l1: Vec<u64> = meta.l1.iter().map(|&e| if e == 0 { 0 } else { e | qcow2::OFLAG_COPIED }).collect();
            s.l1 = Some(to_be_bytes64(&l1));
        }
        s
    }

    pub(super) fn write_snapshot(&self, s: &Snapshot, data_written: bool) -> Result<()> {
        let write = |bytes: &[u8], at: u64, what| self.file.write_all_at(bytes, at).map_err(|e| StorageError::io(what, &self.path, at, e));
        let sync = || self.file.sync_data().map_err(|e| StorageError::io("fdatasync", &self.path, 0, e));
        let mut synced = false;
        if !s.refblocks.is_empty() {
            for (_, at, bytes) in &s.refblocks {
                write(bytes, *at, "write refcount block")?;
            }
            sync()?;
            synced = true;
        }
        if let Some(rt) = &s.refcount_table {
            write(rt, self.refcount_table_offset, "write refcount table")?;
            sync()?;
            synced = true;
        }
        if !s.l2.is_empty() {
            for (_, at, bytes) in &s.l2 {
                write(bytes, *at, "write L2 table")?;
            }
            sync()?;
            synced = true;
        }
        if let Some(l1) = &s.l1 {
            write(l1, self.l1_offset, "write L1 table")?;
            sync()?;
            synced = true;
        }
        if !synced && data_written {
            sync()?;
        }
        Ok(())
    }
}
