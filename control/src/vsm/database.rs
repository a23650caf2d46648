//! The VNF State Database: checkpoints on non-volatile storage, and the
//! chain specs a restarted daemon needs.
//!
//! Layout under the state directory:
//!
//! - `index.redb`: a redb database. Table `checkpoints` maps
//!   `<chain>/<vnf>/<id, 20 digits>` to the checkpoint's [`CheckpointMeta`]
//!   (JSON); table `chains` maps a chain name to its `ChainSpec` (protobuf).
//! - `copies/<origin host>/<chain>/<vnf>/<id>.ckpt`: copies of other
//!   hosts' checkpoints (table `copies`), the same format.
//! - `images/<chain>/<vnf>/<id>.ckpt`: one file per checkpoint: the magic
//!   `NHAMCKPT`, the format version (u32 LE), the BLAKE3 hash of the payload
//!   (32 bytes), then the payload: a zstd stream of the CRIU image directory
//!   (each file as name length u16 LE, name, length u64 LE, bytes).
//!
//! Invariants:
//! - An index entry is written only after its file is complete and synced
//!   (`fsync` of the file, rename, `fsync` of the directory), and redb
//!   commits durably; so every indexed checkpoint was whole on disk.
//! - [`Store::unpack`] checks magic, version and the hash (against the file
//!   header and against the index) before it writes a single image file; a
//!   checkpoint that fails any check is [`StoreError::Corrupt`] and is never
//!   handed to CRIU.
//! - [`Store::gc`] keeps the newest `keep` checkpoints of a VNF.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The version of the checkpoint file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"NHAMCKPT";
/// Bytes of a checkpoint file before its payload: magic, format, BLAKE3.
pub const HEADER: usize = 8 + 4 + 32;
/// zstd level: fast; CRIU images of the sample VNFs shrink 5-10x anyway.
const ZSTD_LEVEL: i32 = 1;
/// Refuse to unpack more than this (a corrupt length must not exhaust memory).
const MAX_IMAGE_BYTES: u64 = 8 << 30;

const CHECKPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("checkpoints");
const CHAINS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("chains");
/// What runs for each chain (SFF process, namespaces, VNF pids), so that a
/// restarted daemon can attach to it again.
const RUNTIME: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("runtime");

/// Copies of other hosts' checkpoints kept here (see [`Store::put_copy`]):
/// `<origin>/<chain>/<vnf>/<id, 20 digits>` to its [`CheckpointMeta`].
const COPIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("copies");
/// Copies kept per origin, chain and VNF: the newest two (the restore
/// point and its fallback).
const COPIES_KEPT: usize = 2;

/// Errors of the state database.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The index failed.
    #[error("state index: {0}")]
    Db(String),
    /// A checkpoint failed its checks; it must not be restored.
    #[error("checkpoint {id} of {chain}/{vnf} is corrupt: {why}")]
    Corrupt {
        /// Chain.
        chain: String,
        /// VNF.
        vnf: String,
        /// Checkpoint.
        id: u64,
        /// Which check failed.
        why: String,
    },
    /// No such checkpoint in the index.
    #[error("no checkpoint {id} of {chain}/{vnf}")]
    Missing {
        /// Chain.
        chain: String,
        /// VNF.
        vnf: String,
        /// Checkpoint.
        id: u64,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What the index knows of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// File format version.
    pub format: u32,
    /// Chain.
    pub chain: String,
    /// VNF.
    pub vnf: String,
    /// Checkpoint id (the SFF's, per hop).
    pub id: u64,
    /// When it was stored, Unix milliseconds.
    pub created_unix_ms: u64,
    /// Bytes of the CRIU image directory.
    pub image_bytes: u64,
    /// Bytes of the stored file.
    pub stored_bytes: u64,
    /// BLAKE3 of the payload, hex.
    pub blake3: String,
    /// The file, relative to the state directory.
    pub file: String,
}

/// The state database of one daemon.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db: redb::Database,
}

fn key(chain: &str, vnf: &str, id: u64) -> String {
    format!("{chain}/{vnf}/{id:020}")
}

fn prefix(chain: &str, vnf: &str) -> String {
    format!("{chain}/{vnf}/")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

impl Store {
    /// Opens (or creates) the state database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir.join("images"))
            .map_err(io(format!("creating {}", dir.display())))?;
        let database = redb::Database::create(dir.join("index.redb")).map_err(db)?;
        let tx = database.begin_write().map_err(db)?;
        tx.open_table(CHECKPOINTS).map_err(db)?;
        tx.open_table(CHAINS).map_err(db)?;
        tx.open_table(RUNTIME).map_err(db)?;
        tx.open_table(COPIES).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db: database,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the database answers a read and the state directory is
    /// there (what the health service and `nham_up` report).
    pub fn healthy(&self) -> bool {
        self.chains().is_ok() && self.dir.is_dir()
    }

    /// Stores the CRIU image directory `images` as checkpoint `id` of
    /// `chain`/`vnf`: compressed, hashed, synced, then indexed.
    pub fn put(
        &self,
        chain: &str,
        vnf: &str,
        id: u64,
        images: &Path,
    ) -> Result<CheckpointMeta, StoreError> {
        let (file, image_bytes) = pack(images)?;
        let hash = blake3::Hash::from_bytes(file[12..HEADER].try_into().expect("32 bytes"));
        let payload_len = file.len() - HEADER;
        let rel = format!("images/{chain}/{vnf}/{id}.ckpt");
        self.write_durably(&rel, &[&file])?;
        let meta = CheckpointMeta {
            format: FORMAT_VERSION,
            chain: chain.into(),
            vnf: vnf.into(),
            id,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            image_bytes,
            stored_bytes: (HEADER + payload_len) as u64,
            blake3: hash.to_hex().to_string(),
            file: rel,
        };
        let value = serde_json::to_vec(&meta).map_err(db)?;
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(CHECKPOINTS)
            .map_err(db)?
            .insert(key(chain, vnf, id).as_str(), value.as_slice())
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(meta)
    }

    /// Checkpoint `id` of `chain`/`vnf`, if indexed.
    pub fn get(
        &self,
        chain: &str,
        vnf: &str,
        id: u64,
    ) -> Result<Option<CheckpointMeta>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(CHECKPOINTS).map_err(db)?;
        let v = t.get(key(chain, vnf, id).as_str()).map_err(db)?;
        v.map(|v| serde_json::from_slice(v.value()).map_err(db))
            .transpose()
    }

    /// Every indexed checkpoint of `chain`/`vnf`, oldest first.
    pub fn list(&self, chain: &str, vnf: &str) -> Result<Vec<CheckpointMeta>, StoreError> {
        self.scan(&prefix(chain, vnf))
    }

    /// Every indexed checkpoint whose key starts with `p`, in key order.
    fn scan(&self, p: &str) -> Result<Vec<CheckpointMeta>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(CHECKPOINTS).map_err(db)?;
        let mut out = Vec::new();
        for item in t.range(p..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            if !k.value().starts_with(p) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }

    /// Checks checkpoint `meta` and unpacks its CRIU images into `dest`
    /// (made empty first). Nothing is written unless every check passes.
    pub fn unpack(&self, meta: &CheckpointMeta, dest: &Path) -> Result<(), StoreError> {
        unpack_file(meta, &self.read_file(meta)?, dest)
    }

    /// The bytes of checkpoint `meta`'s file (unchecked: see
    /// [`unpack_file`]).
    pub fn read_file(&self, meta: &CheckpointMeta) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(&meta.file);
        // A file that is not there is a missing checkpoint (given up for
        // the one before); any other failure to read it may pass (EIO,
        // ENOMEM, EMFILE…) and says nothing of the image: the checkpoint
        // is kept, never taken for corrupt.
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::Missing {
                chain: meta.chain.clone(),
                vnf: meta.vnf.clone(),
                id: meta.id,
            },
            _ => StoreError::Io {
                what: format!("reading checkpoint {} ({})", meta.id, path.display()),
                source: e,
            },
        })
    }

    /// Deletes every checkpoint of `chain`/`vnf` but those in `keep` (the
    /// ones the SFF can restore); returns how many went.
    pub fn retain(&self, chain: &str, vnf: &str, keep: &[u64]) -> Result<usize, StoreError> {
        let all = self.list(chain, vnf)?;
        let old: Vec<CheckpointMeta> = all.into_iter().filter(|m| !keep.contains(&m.id)).collect();
        self.remove(&old)?;
        Ok(old.len())
    }

    /// Deletes every checkpoint of `chain`, its spec and its runtime record.
    pub fn remove_chain(&self, chain: &str) -> Result<(), StoreError> {
        self.remove_checkpoints(chain)?;
        let tx = self.db.begin_write().map_err(db)?;
        for table in [CHAINS, RUNTIME] {
            tx.open_table(table)
                .map_err(db)?
                .remove(chain)
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    /// Deletes every checkpoint of `chain` (its SFF started afresh: their
    /// identifiers and marks mean nothing to the new one).
    pub fn remove_checkpoints(&self, chain: &str) -> Result<(), StoreError> {
        let metas = self.scan(&format!("{chain}/"))?;
        self.remove(&metas)?;
        let _ = std::fs::remove_dir_all(self.dir.join("images").join(chain));
        Ok(())
    }

    /// Deletes checkpoint `id` of `chain`/`vnf` (one found corrupt: never
    /// to be tried again, and not to be counted among the kept ones).
    pub fn remove_checkpoint(&self, chain: &str, vnf: &str, id: u64) -> Result<(), StoreError> {
        let metas: Vec<CheckpointMeta> = self
            .list(chain, vnf)?
            .into_iter()
            .filter(|m| m.id == id)
            .collect();
        self.remove(&metas)
    }

    fn remove(&self, metas: &[CheckpointMeta]) -> Result<(), StoreError> {
        if metas.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(CHECKPOINTS).map_err(db)?;
            for m in metas {
                t.remove(key(&m.chain, &m.vnf, m.id).as_str()).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        // Files after the index: a crash in between leaves an orphan file,
        // never an index entry without its file.
        for m in metas {
            let _ = std::fs::remove_file(self.dir.join(&m.file));
        }
        Ok(())
    }

    /// Writes `parts`, in order, to file `rel` of the state directory:
    /// into a temporary file, synced, renamed into place, its directory
    /// synced (a crash leaves the old file or the whole new one).
    fn write_durably(&self, rel: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        let path = self.dir.join(rel);
        let parent = path.parent().expect("has a parent");
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        let tmp = path.with_extension("tmp");
        {
            let mut f =
                std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
            parts
                .iter()
                .try_for_each(|p| f.write_all(p))
                .and_then(|()| f.sync_all())
                .map_err(io(format!("writing {}", tmp.display())))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
        sync_dir(parent)
    }
}

/// Copies of other hosts' checkpoints (issue 14: a checkpoint counts as
/// committed only once another host keeps a copy).
impl Store {
    /// The path of checkpoint `meta`'s file.
    pub fn file_of(&self, meta: &CheckpointMeta) -> PathBuf {
        self.dir.join(&meta.file)
    }

    /// Keeps `file` (the bytes of a checkpoint file, as [`Store::put`]
    /// wrote it on host `origin`, indexed there as `meta`) as a copy for
    /// that host: checked first (magic, version, the hash in its header
    /// against the payload and against `meta`, its size), then written,
    /// synced and indexed as [`Store::put`] does, under
    /// `copies/<origin>/<chain>/<vnf>/<id>.ckpt`. Of each origin's VNF the
    /// newest two copies are kept. Names must be checked by the caller
    /// (they become paths). A copy that fails a check is
    /// [`StoreError::Corrupt`] and nothing is written.
    pub fn put_copy(
        &self,
        origin: &str,
        meta: &CheckpointMeta,
        file: &[u8],
    ) -> Result<CheckpointMeta, StoreError> {
        let corrupt = |why: String| StoreError::Corrupt {
            chain: meta.chain.clone(),
            vnf: meta.vnf.clone(),
            id: meta.id,
            why: format!("copy from {origin}: {why}"),
        };
        if file.len() < HEADER || &file[..8] != MAGIC {
            return Err(corrupt("not a checkpoint file (bad magic)".into()));
        }
        let version = u32::from_le_bytes(file[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION || meta.format != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let hash = blake3::hash(&file[HEADER..]);
        if hash.as_bytes() != &file[12..HEADER] || hash.to_hex().as_str() != meta.blake3 {
            return Err(corrupt("payload does not match its hash".into()));
        }
        if file.len() as u64 != meta.stored_bytes {
            return Err(corrupt(format!(
                "{} bytes, its index says {}",
                file.len(),
                meta.stored_bytes
            )));
        }
        let rel = format!(
            "copies/{origin}/{}/{}/{}.ckpt",
            meta.chain, meta.vnf, meta.id
        );
        self.write_durably(&rel, &[file])?;
        let copy = CheckpointMeta {
            file: rel,
            ..meta.clone()
        };
        let value = serde_json::to_vec(&copy).map_err(db)?;
        let vnf_prefix = format!("{origin}/{}", prefix(&meta.chain, &meta.vnf));
        let tx = self.db.begin_write().map_err(db)?;
        let mut old = Vec::new();
        {
            let mut t = tx.open_table(COPIES).map_err(db)?;
            t.insert(
                format!("{origin}/{}", key(&meta.chain, &meta.vnf, meta.id)).as_str(),
                value.as_slice(),
            )
            .map_err(db)?;
            let mut all: Vec<(String, CheckpointMeta)> = Vec::new();
            for item in t.range(vnf_prefix.as_str()..).map_err(db)? {
                let (k, v) = item.map_err(db)?;
                if !k.value().starts_with(&vnf_prefix) {
                    break;
                }
                all.push((
                    k.value().to_string(),
                    serde_json::from_slice(v.value()).map_err(db)?,
                ));
            }
            let surplus = all.len().saturating_sub(COPIES_KEPT);
            for (k, m) in all.into_iter().take(surplus) {
                t.remove(k.as_str()).map_err(db)?;
                old.push(m);
            }
        }
        tx.commit().map_err(db)?;
        for m in old {
            let _ = std::fs::remove_file(self.dir.join(&m.file));
        }
        Ok(copy)
    }

    /// The copies of host `origin`'s checkpoints kept here, in key order
    /// (by chain, VNF, then oldest first).
    pub fn copies(&self, origin: &str) -> Result<Vec<CheckpointMeta>, StoreError> {
        let p = format!("{origin}/");
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(COPIES).map_err(db)?;
        let mut out = Vec::new();
        for item in t.range(p.as_str()..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            if !k.value().starts_with(&p) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(db)?);
        }
        Ok(out)
    }
}

/// Records of chains and their runtimes, so a restarted daemon finds them.
impl Store {
    /// Records a chain's spec (protobuf bytes) so a restarted daemon finds it.
    pub fn put_chain(&self, name: &str, spec: &[u8]) -> Result<(), StoreError> {
        self.put_row(CHAINS, name, spec)
    }

    /// Every recorded chain spec, by name.
    pub fn chains(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.rows(CHAINS)
    }

    /// Records what runs for a chain (opaque bytes; the runtime's record).
    pub fn put_runtime(&self, name: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put_row(RUNTIME, name, record)
    }

    /// Every chain's runtime record, by name.
    pub fn runtimes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.rows(RUNTIME)
    }

    fn put_row(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        name: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(table)
            .map_err(db)?
            .insert(name, value)
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn rows(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(table).map_err(db)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if raw.len() < n {
        return Err("archive truncated".into());
    }
    let (a, b) = raw.split_at(n);
    *raw = b;
    Ok(a)
}

/// Splits an unpacked payload into (name, bytes); never panics on bad input.
/// The CRIU images in `dir` as one checkpoint file (magic, format
/// version, BLAKE3 of the payload, the payload: a zstd-compressed archive
/// of the files), and the images' size: what the store keeps, and what
/// goes between hosts.
pub fn pack(dir: &Path) -> Result<(Vec<u8>, u64), StoreError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(format!("listing {}", dir.display())))?
        .collect::<Result<_, _>>()
        .map_err(io(format!("listing {}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    let mut enc = zstd::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(io("starting zstd"))?;
    let mut image_bytes = 0u64;
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let bytes = std::fs::read(e.path()).map_err(io(format!("reading {name}")))?;
        image_bytes += bytes.len() as u64;
        enc.write_all(&(name.len() as u16).to_le_bytes())
            .and_then(|()| enc.write_all(name.as_bytes()))
            .and_then(|()| enc.write_all(&(bytes.len() as u64).to_le_bytes()))
            .and_then(|()| enc.write_all(&bytes))
            .map_err(io("compressing"))?;
    }
    let payload = enc.finish().map_err(io("compressing"))?;
    let hash = blake3::hash(&payload);
    let mut file = Vec::with_capacity(HEADER + payload.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(hash.as_bytes());
    file.extend_from_slice(&payload);
    Ok((file, image_bytes))
}

/// Checks checkpoint file `bytes` against its index entry `meta` (magic,
/// format, hash, image size) and unpacks its CRIU images into `dest`
/// (made empty first). Nothing is written unless every check passes.
pub fn unpack_file(meta: &CheckpointMeta, bytes: &[u8], dest: &Path) -> Result<(), StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        chain: meta.chain.clone(),
        vnf: meta.vnf.clone(),
        id: meta.id,
        why,
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("not a checkpoint file (bad magic)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION || meta.format != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version} (index: {}), this build reads {FORMAT_VERSION}",
            meta.format
        )));
    }
    let payload = &bytes[HEADER..];
    let hash = blake3::hash(payload);
    if hash.as_bytes() != &bytes[12..HEADER] {
        return Err(corrupt(
            "payload does not match the hash in its header".into(),
        ));
    }
    if hash.to_hex().as_str() != meta.blake3 {
        return Err(corrupt("hash differs from the index".into()));
    }
    let mut raw = Vec::new();
    zstd::Decoder::new(payload)
        .map_err(|e| corrupt(format!("zstd: {e}")))?
        .take(MAX_IMAGE_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| corrupt(format!("zstd: {e}")))?;
    let files = parse_archive(&raw).map_err(corrupt)?;
    if files.iter().map(|(_, b)| b.len() as u64).sum::<u64>() != meta.image_bytes {
        return Err(corrupt("image size differs from the index".into()));
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
    for (name, data) in files {
        std::fs::write(dest.join(name), data).map_err(io(format!("writing {name}")))?;
    }
    Ok(())
}

fn parse_archive(mut raw: &[u8]) -> Result<Vec<(&str, &[u8])>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let name_len = u16::from_le_bytes(take(&mut raw, 2)?.try_into().expect("2")) as usize;
        let name = std::str::from_utf8(take(&mut raw, name_len)?)
            .map_err(|_| "file name is not UTF-8".to_string())?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("bad file name {name:?}"));
        }
        let len = u64::from_le_bytes(take(&mut raw, 8)?.try_into().expect("8"));
        let len = usize::try_from(len).map_err(|_| "file length too large".to_string())?;
        let data = take(&mut raw, len)?;
        out.push((name, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(nham_netns::unique_name(tag));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn images(dir: &Path, seed: u8) -> PathBuf {
        let d = dir.join(format!("img{seed}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("pages-1.img"), vec![seed; 100_000]).unwrap();
        std::fs::write(d.join("core-1.img"), b"core".repeat(seed as usize + 1)).unwrap();
        d
    }

    /// A checkpoint stored on one host is kept as a copy on another, checked
    /// first: a copy that differs from its hash, its size or its index is
    /// refused and nothing is written; a copy unpacks to the same images;
    /// the newest two copies of a VNF are kept.
    #[test]
    fn a_copy_from_another_host_is_checked_kept_and_unpacks_the_same() {
        let (a, b) = (tmp("nham-db-a-"), tmp("nham-db-b-"));
        let (origin, here) = (Store::open(&a).unwrap(), Store::open(&b).unwrap());
        let img = images(&a, 3);
        let meta = origin.put("web", "fw", 7, &img).unwrap();
        let file = std::fs::read(origin.file_of(&meta)).unwrap();
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            here.put_copy("h0", &meta, &bad),
            Err(StoreError::Corrupt { .. })
        ));
        let other = CheckpointMeta {
            stored_bytes: meta.stored_bytes + 1,
            ..meta.clone()
        };
        assert!(here.put_copy("h0", &other, &file).is_err(), "size checked");
        assert!(here.copies("h0").unwrap().is_empty(), "nothing written");
        let copy = here.put_copy("h0", &meta, &file).unwrap();
        assert_eq!(copy.file, "copies/h0/web/fw/7.ckpt");
        let out = b.join("out");
        here.unpack(&copy, &out).unwrap();
        same_dirs(&img, &out);
        for id in [8, 9] {
            let m = origin.put("web", "fw", id, &images(&a, id as u8)).unwrap();
            let f = std::fs::read(origin.file_of(&m)).unwrap();
            here.put_copy("h0", &m, &f).unwrap();
        }
        let kept: Vec<u64> = here.copies("h0").unwrap().iter().map(|m| m.id).collect();
        assert_eq!(kept, vec![8, 9]);
        assert!(
            !b.join("copies/h0/web/fw/7.ckpt").exists(),
            "the oldest removed"
        );
        assert!(here.copies("h1").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }

    fn same_dirs(a: &Path, b: &Path) {
        for e in std::fs::read_dir(a).unwrap() {
            let e = e.unwrap();
            assert_eq!(
                std::fs::read(e.path()).unwrap(),
                std::fs::read(b.join(e.file_name())).unwrap()
            );
        }
    }

    #[test]
    fn round_trip_index_gc_and_reopen() {
        let dir = tmp("nham-store-");
        let s = Store::open(&dir.join("state")).unwrap();
        let a = images(&dir, 1);
        let m1 = s.put("c", "fw", 1, &a).unwrap();
        assert!(m1.stored_bytes < m1.image_bytes, "compressed: {m1:?}");
        let b = images(&dir, 2);
        s.put("c", "fw", 2, &b).unwrap();
        s.put("c", "nat", 7, &a).unwrap();
        assert_eq!(s.list("c", "fw").unwrap().len(), 2);
        let out = dir.join("out");
        s.unpack(&s.get("c", "fw", 2).unwrap().unwrap(), &out)
            .unwrap();
        same_dirs(&b, &out);
        assert_eq!(
            s.retain("c", "fw", &[2]).unwrap(),
            1,
            "only what is kept stays"
        );
        assert_eq!(
            s.list("c", "fw")
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert!(!dir.join("state").join(&m1.file).exists());
        s.put_chain("c", b"spec").unwrap();
        drop(s);
        let s = Store::open(&dir.join("state")).unwrap();
        assert_eq!(s.list("c", "nat").unwrap().len(), 1);
        assert_eq!(
            s.chains().unwrap(),
            vec![("c".to_string(), b"spec".to_vec())]
        );
        s.remove_chain("c").unwrap();
        assert!(s.list("c", "nat").unwrap().is_empty());
        assert!(s.chains().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corruption_is_detected_and_nothing_is_unpacked() {
        let dir = tmp("nham-store-");
        let s = Store::open(&dir.join("state")).unwrap();
        let a = images(&dir, 3);
        let m = s.put("c", "v", 1, &a).unwrap();
        let file = dir.join("state").join(&m.file);
        let good = std::fs::read(&file).unwrap();
        let out = dir.join("out");
        // Every single-byte flip, in the header and across the payload.
        let mut positions: Vec<usize> = (0..HEADER).collect();
        positions.extend((HEADER..good.len()).step_by(97));
        for pos in positions {
            let mut bad = good.clone();
            bad[pos] ^= 0x40;
            std::fs::write(&file, &bad).unwrap();
            let e = s.unpack(&m, &out).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { .. }), "byte {pos}: {e}");
            assert!(!out.exists(), "byte {pos}: nothing unpacked");
        }
        // Truncated, and missing.
        std::fs::write(&file, &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            s.unpack(&m, &out),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            s.unpack(&m, &out),
            Err(StoreError::Missing { id: 1, .. })
        ));
        // A file that cannot be read (here a directory in its place) is an
        // I/O error, not a corrupt checkpoint: it may pass, and the
        // checkpoint must be kept.
        std::fs::create_dir(&file).unwrap();
        assert!(matches!(s.unpack(&m, &out), Err(StoreError::Io { .. })));
        std::fs::remove_dir(&file).unwrap();
        // An index entry that disagrees with a good file.
        std::fs::write(&file, &good).unwrap();
        let mut lying = m.clone();
        lying.blake3 = "00".repeat(32);
        assert!(matches!(
            s.unpack(&lying, &out),
            Err(StoreError::Corrupt { .. })
        ));
        s.unpack(&m, &out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn archive_parser_never_panics() {
        for raw in [
            &b""[..],
            &[1],
            &[0, 0],
            &[3, 0, b'a', b'b'],
            &[1, 0, b'/', 0, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, b'a', 255, 255, 255, 255, 255, 255, 255, 255],
        ] {
            let _ = parse_archive(raw);
        }
        bolero::check!().for_each(|raw: &[u8]| {
            let _ = parse_archive(raw);
        });
    }
}
