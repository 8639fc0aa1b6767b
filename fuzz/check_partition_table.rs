// Shared by the fuzz target and tests/fuzz_seeds.rs (included, not a module).

/// Properties, for `data` as the first bytes of a disk (read as the server
/// reads a base, zeros past the end, and as pxeroot-init reads /dev/nbd0,
/// an error past the end): nothing panics; partition numbers are those the
/// kernel gives (GPT slots from 1, MBR primaries 1 to 4, logical ones from
/// 5); no table yields more partitions than its bounds allow; superblock
/// probing of the disk and of every partition start never panics.
pub fn check_partition_table(data: &[u8]) {
    let zero_past_end = |buf: &mut [u8], off: u64| -> Result<(), ()> {
        read_zero_past_end(data, buf, off);
        Ok(())
    };
    let error_past_end = |buf: &mut [u8], off: u64| -> Result<(), ()> {
        let start = usize::try_from(off).map_err(|_| ())?;
        let end = start.checked_add(buf.len()).ok_or(())?;
        buf.copy_from_slice(data.get(start..end).ok_or(())?);
        Ok(())
    };
    let _ = gpt::fsid::identify(data);
    for parts in [gpt::read(zero_past_end), gpt::read(error_past_end)] {
        let Ok(Ok(Some(parts))) = parts else { continue };
        let gpt_table = parts.first().is_some_and(|p| matches!(p.scheme, gpt::Scheme::Gpt { .. }));
        let most = if gpt_table { gpt::MAX_ENTRIES as usize } else { 4 + 4 * gpt::mbr::MAX_EBRS as usize };
        assert!(parts.len() <= most, "{} partitions", parts.len());
        for p in &parts {
            assert!(p.number >= 1);
            match p.scheme {
                gpt::Scheme::Gpt { .. } => assert!(p.number <= gpt::MAX_ENTRIES),
                gpt::Scheme::Mbr { .. } => assert!(p.number <= 4 || p.number >= gpt::mbr::FIRST_LOGICAL),
            }
            let id = p.partuuid();
            assert!(id.len() == 36 || id.len() == 11, "{id}");
            assert_eq!(gpt::pick_root(&parts, Some(&id)).map(|q| q.partuuid()), Some(id));
            if let Some(rest) = usize::try_from(p.start).ok().and_then(|s| data.get(s..)) {
                let _ = gpt::fsid::identify(rest);
            }
        }
        let _ = gpt::pick_root(&parts, None);
    }
}

/// Fill `buf` with `data`'s bytes at `off`, zeros past its end, as the
/// server reads a base shorter than its backing.
pub fn read_zero_past_end(data: &[u8], buf: &mut [u8], off: u64) {
    buf.fill(0);
    let start = usize::try_from(off).unwrap_or(usize::MAX).min(data.len());
    let n = (data.len() - start).min(buf.len());
    buf[..n].copy_from_slice(&data[start..start + n]);
}
