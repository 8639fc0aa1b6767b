//! Making an overlay (`create`) and opening one (`open`): the header and
//! its checks, the metadata read into memory, leaked clusters reclaimed.

use super::*;

impl Overlay {
    /// Create a new, empty overlay at `path` over `base` and open it. The file
    /// appears under its name only once it is complete (write, sync, rename).
    pub fn create(path: &Path, base: Arc<BaseImage>) -> Result<Overlay> {
        let layout = OverlayLayout::new(base.size());
        let backing = base.path().to_string_lossy().into_owned();
        let header = layout
            .header_cluster(&backing, base.format().name())
            .map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?;
        let tmp = path.with_extension("qcow2.creating");
        let io = |op, off, e| StorageError::io(op, &tmp, off, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|source| StorageError::Open { path: tmp.clone(), source })?;
        file.write_all_at(&header, 0).map_err(|e| io("write header", 0, e))?;
        let rt_off = layout.refcount_table_cluster * CLUSTER;
        let rb_off = layout.first_refblock_cluster * CLUSTER;
        file.write_all_at(&rb_off.to_be_bytes(), rt_off).map_err(|e| io("write refcount table", rt_off, e))?;
        let mut refblock = vec![0u8; CLUSTER as usize];
        for c in 0..layout.first_free_cluster as usize {
            refblock[2 * c..2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        file.write_all_at(&refblock, rb_off).map_err(|e| io("write refcount block", rb_off, e))?;
        // Real blocks for all metadata, so flushes never meet a full disk.
        sys::allocate(&file, 0, layout.first_free_cluster * CLUSTER).map_err(|e| io("allocate", 0, e))?;
        file.sync_all().map_err(|e| io("sync", 0, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, 0, e))?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = File::open(dir) {
                d.sync_all().map_err(|e| StorageError::io("sync directory", dir, 0, e))?;
            }
        }
        Overlay::open(path, base)
    }

    /// Open an existing overlay, check it belongs to `base`, load its
    /// metadata and reclaim clusters leaked by a crash.
    pub fn open(path: &Path, base: Arc<BaseImage>) -> Result<Overlay> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?;
        sys::lock_exclusive_write(&file).map_err(|_| StorageError::Locked { path: path.to_path_buf() })?;
        let corrupt = |reason: String| StorageError::Corrupt { path: path.to_path_buf(), reason };
        let file_len = file.metadata().map_err(|e| StorageError::io("stat", path, 0, e))?.len();
        let mut first = vec![0u8; CLUSTER.min(file_len) as usize];
        file.read_exact_at(&mut first, 0).map_err(|e| StorageError::io("read header", path, 0, e))?;
        let h = Header::parse(&first).map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?;
        if h.incompatible & (qcow2::INCOMPAT_DIRTY | qcow2::INCOMPAT_CORRUPT) != 0 {
            return Err(StorageError::Unclean { path: path.to_path_buf() });
        }
        if h.version != 3 || h.cluster_bits != OVERLAY_CLUSTER_BITS || h.refcount_order != 4 {
            return Err(corrupt(format!(
                "pxeroot writes qcow2 v3 with 64 KiB clusters and 16-bit refcounts, this is v{} with {}-bit clusters and refcount order {}",
                h.version, h.cluster_bits, h.refcount_order
            )));
        }
        if h.incompatible != 0 || h.nb_snapshots != 0 {
            return Err(corrupt("it has internal snapshots or incompatible features pxeroot does not write".into()));
        }
        let backing = h.backing_name(&first).map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?;
        let expected = base.path().to_string_lossy();
        if backing.as_deref() != Some(&*expected) {
            return Err(StorageError::BaseChanged {
                overlay: path.to_path_buf(),
                reason: format!("its backing file is {:?}, the configured base is {:?}", backing.unwrap_or_default(), expected),
            });
        }
        if h.size != base.size() {
            return Err(StorageError::BaseChanged {
                overlay: path.to_path_buf(),
                reason: format!("it is {} bytes, the base is now {} bytes", h.size, base.size()),
            });
        }

        let l1_count = Header::l1_entries_for(h.size, h.cluster_bits) as usize;
        let l1_raw = read_u64s(&file, path, h.l1_table_offset, l1_count, "read L1")?;
        let rt_count = (h.refcount_table_clusters as u64 * CLUSTER / 8) as usize;
        let rt_raw = read_u64s(&file, path, h.refcount_table_offset, rt_count, "read refcount table")?;
        let max_clusters = rt_count as u64 * REFCOUNTS_PER_BLOCK;

        let mut meta = Meta {
            l1: l1_raw.iter().map(|e| e & qcow2::OFFSET_MASK).collect(),
            l2: vec![None; l1_count],
            refcount_table: rt_raw.iter().map(|e| e & qcow2::OFFSET_MASK).collect(),
            refblocks: vec![None; rt_count],
            ..Meta::default()
        };
        // Expected refcounts, built from every reference in the image.
        let mut referenced: Vec<u64> = Vec::new();
        let clusters_of = |off: u64, len: u64| (off / CLUSTER)..(off + len).div_ceil(CLUSTER);
        referenced.extend(clusters_of(0, 1));
        referenced.extend(clusters_of(h.l1_table_offset, l1_count as u64 * 8));
        referenced.extend(clusters_of(h.refcount_table_offset, h.refcount_table_clusters as u64 * CLUSTER));
        for (i, &rb) in meta.refcount_table.iter().enumerate() {
            if rb == 0 {
                continue;
            }
            referenced.push(rb / CLUSTER);
            let mut raw = vec![0u8; CLUSTER as usize];
            file.read_exact_at(&mut raw, rb).map_err(|e| StorageError::io("read refcount block", path, rb, e))?;
            meta.refblocks[i] = Some(raw.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect());
        }
        for i in 0..l1_count {
            let at = meta.l1[i];
            if at == 0 {
                continue;
            }
            referenced.push(at / CLUSTER);
            let table = read_u64s(&file, path, at, L2_ENTRIES as usize, "read L2")?;
            for &e in &table {
                match qcow2::decode_l2(e, OVERLAY_CLUSTER_BITS, 3)
                    .map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?
                {
                    ClusterMap::Data(hst) | ClusterMap::ZeroAlloc(hst) => referenced.push(hst / CLUSTER),
                    ClusterMap::Compressed { .. } => {
                        return Err(corrupt("it holds compressed clusters, which pxeroot does not write into".into()))
                    }
                    ClusterMap::Zero | ClusterMap::Unallocated => {}
                }
            }
            meta.l2[i] = Some(table.into_boxed_slice());
        }
        referenced.sort_unstable();
        if let Some(w) = referenced.windows(2).find(|w| w[0] == w[1]) {
            return Err(corrupt(format!("cluster {} is referenced twice", w[0])));
        }
        let refcount = |meta: &Meta, c: u64| -> u16 {
            let (b, i) = ((c / REFCOUNTS_PER_BLOCK) as usize, (c % REFCOUNTS_PER_BLOCK) as usize);
            meta.refblocks.get(b).and_then(|blk| blk.as_ref()).map_or(0, |blk| blk[i])
        };
        for &c in &referenced {
            if c >= max_clusters || refcount(&meta, c) != 1 {
                return Err(corrupt(format!(
                    "cluster {c} is in use but its refcount is {}; run `qemu-img check -r all {}`",
                    refcount(&meta, c),
                    path.display()
                )));
            }
        }
        // Everything counted but not referenced is a leak from a crash.
        let referenced: HashSet<u64> = referenced.into_iter().collect();
        let mut leaks = 0u64;
        let mut highest = 0u64;
        for b in 0..meta.refblocks.len() {
            let Some(block) = meta.refblocks[b].as_mut() else { continue };
            for (i, rc) in block.iter_mut().enumerate() {
                let c = b as u64 * REFCOUNTS_PER_BLOCK + i as u64;
                if *rc != 0 && !referenced.contains(&c) {
                    *rc = 0;
                    leaks += 1;
                    meta.dirty_refblocks.insert(b);
                } else if *rc != 0 {
                    highest = c;
                }
            }
        }
        meta.next_free = (highest + 1).max(file_len.div_ceil(CLUSTER));
        let overlay = Overlay {
            path: path.to_path_buf(),
            file,
            base,
            size: h.size,
            l1_offset: h.l1_table_offset,
            refcount_table_offset: h.refcount_table_offset,
            max_clusters,
            meta: Mutex::new(meta),
            settled: Condvar::new(),
            flushing: Mutex::new(()),
            unsynced: AtomicBool::new(false),
        };
        if leaks > 0 {
            tracing::warn!(overlay = %path.display(), leaks, "reclaimed clusters leaked by an earlier crash");
            overlay.flush()?;
        }
        Ok(overlay)
    }
}
