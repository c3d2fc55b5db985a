//! Finding plugins: every immediate subdirectory of a plugin dir that holds a `plugin.json`.

use plugind_protocol::manifest::{self, Manifest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One plugin directory found on disk.
#[derive(Debug)]
pub struct Found {
    /// The directory.
    pub dir: PathBuf,
    /// The name to list it under.
    pub name: String,
    /// The manifest, or why it does not load (naming file and field).
    pub manifest: Result<Manifest, String>,
    /// Version to show even when invalid.
    pub version: String,
}

/// Scans `dirs`; errors reading a directory itself are returned as strings beside the finds.
///
/// Names are unique, and plugin names and provided services share one namespace (a plugin's
/// name is a service of its own). `holders` (name → directory: as recorded at the last scan,
/// see [`write_holders`], and from the plugins loaded) says who holds each name:
/// - of two directories naming the same plugin, the holder keeps the name, else the first in
///   order (the `--plugins` dirs in turn, each sorted) when nothing held it; the others are
///   invalid, listed under `NAME@DIR`. So a copy of a running plugin's directory (a backup, a
///   second checkout) never takes its name over, whatever it is called;
/// - when the holder's directory is gone (removed, moved, or being redeployed), the name stays
///   reserved for it: no other directory gets it, as a plugin name or as a service, until the
///   directory comes back or the operator releases the name with an explicit reload
///   (`release_gone`: `pluginctl reload`, SIGHUP, and plugind's start). A redeploy (`rm -r`, then a copy) let a
///   plugin providing the name, or a duplicate directory, take it for good, with its calls and
///   its data (audit 16). Even then, when several directories claim it, none gets it: each is
///   invalid until only one is left, since a directory waiting invalid beside the holder would
///   otherwise take the name;
/// - a plugin named after a service that another plugin provides and holds is invalid (a plugin
///   added with the name `llm` took every call for the service `llm`); the other way round, a
///   service named after a plugin is not routed (`crate::registry`).
pub fn scan(
    dirs: &[PathBuf],
    plugind_version: &semver::Version,
    holders: &Holders,
    release_gone: bool,
) -> (Vec<Found>, Vec<String>) {
    let mut found: Vec<Found> = Vec::new();
    let mut errors = Vec::new();
    for root in dirs {
        // Absolute, so a plugin's paths stay right once its cwd is its own directory.
        let root = &std::path::absolute(root).unwrap_or_else(|_| root.clone());
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("{}: cannot read plugin directory: {e}", root.display()));
                continue;
            }
        };
        let mut dirs: Vec<PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| holds_manifest(p)).collect();
        dirs.sort();
        for dir in dirs {
            found.push(load(&dir, plugind_version));
        }
    }
    // Who claims each plugin name, in order.
    let mut claims: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in &found {
        claims.entry(f.name.clone()).or_default().push(f.dir.clone());
    }
    // The owner of each name: its holder if it claims it; none while a gone holder keeps it
    // reserved; else the only claimant, else (nothing held it) the first; none when the holder
    // gave it up and several claim it. With how many claim it.
    let owner: BTreeMap<String, (Option<PathBuf>, usize)> = claims
        .into_iter()
        .map(|(name, dirs)| {
            let held = holders.get(&name);
            let reserved = holders.plugins.get(&name).is_some_and(|h| is_gone(h) && !release_gone);
            let owner = match held {
                Some(h) if dirs.contains(h) => Some(h.clone()),
                Some(_) if reserved => None,
                Some(_) if dirs.len() > 1 => None,
                _ => dirs.first().cloned(),
            };
            (name, (owner, dirs.len()))
        })
        .collect();
    // Services each plugin provides under another name than its own, by directory.
    let provided: Vec<(PathBuf, Vec<String>)> = found
        .iter()
        .filter_map(|f| {
            let m = f.manifest.as_ref().ok()?;
            Some((f.dir.clone(), m.provides.iter().map(|p| p.name.clone()).filter(|n| *n != m.name).collect()))
        })
        .collect();
    for f in &mut found {
        let (owns, claimants) = owner.get(&f.name).cloned().unwrap_or_default();
        let why = match &owns {
            Some(d) if *d != f.dir => {
                Some(format!("expected a unique plugin name, found {:?} (already used by {})", f.name, d.display()))
            }
            Some(_) => {
                // A service of another plugin's, held by it: this name is taken.
                let service_holder = holders
                    .services
                    .get(&f.name)
                    .filter(|h| **h != f.dir)
                    .filter(|h| provided.iter().any(|(dir, services)| dir == *h && services.contains(&f.name)));
                service_holder.map(|h| {
                    format!(
                        "expected a name that is not a service another plugin provides, found {:?} (a service of the plugin in {}; plugin names and services share one namespace)",
                        f.name,
                        h.display()
                    )
                })
            }
            None => {
                let holder = holders.get(&f.name).map_or_else(String::new, |h| h.display().to_string());
                Some(if claimants > 1 {
                    format!(
                        "expected a unique plugin name, found {:?}, which {claimants} directories claim while the one that held it ({holder}) is gone: remove all but one",
                        f.name
                    )
                } else {
                    format!(
                        "expected a name no other directory holds, found {:?}, held by {holder}, which is gone: the name waits for it \
                         (with its data); if it is gone for good, `pluginctl reload` gives the name to this directory",
                        f.name
                    )
                })
            }
        };
        let Some(why) = why else { continue };
        if f.manifest.is_ok() {
            f.manifest = Err(format!("{}: field /name: {why}", f.dir.join("plugin.json").display()));
        }
        f.name = format!("{}@{}", f.name, f.dir.display());
    }
    (found, errors)
}

/// Who holds each name, as recorded in the state dir's `names.json`: plugin names (a plugin's
/// directory under its own name) apart from services provided under other names, since only a
/// plugin name waits for its directory while it is gone (a service has other providers).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Holders {
    /// Plugin name → the directory of the plugin of that name.
    pub plugins: BTreeMap<String, PathBuf>,
    /// Service provided under another name than its provider's → the first directory providing it.
    pub services: BTreeMap<String, PathBuf>,
}

impl Holders {
    /// Who holds `name`, as a plugin name or else as a service.
    pub fn get(&self, name: &str) -> Option<&PathBuf> {
        self.plugins.get(name).or_else(|| self.services.get(name))
    }

    /// The plugin names whose directories are gone: reserved (see [`scan`]).
    pub fn reserved(&self) -> std::collections::BTreeSet<String> {
        self.plugins.iter().filter(|(_, dir)| is_gone(dir)).map(|(n, _)| n.clone()).collect()
    }
}

/// The holders recorded in `path` at the last scan; empty when there is none yet or it cannot be
/// read (said on stderr). A file of an earlier plugind, one flat map of names, is read too: a
/// name is a plugin's when its directory's manifest still names it, or the directory is gone.
pub fn read_holders(path: &Path) -> Holders {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "plugin name holders unreadable, ignored: {e}");
            }
            return Holders::default();
        }
    };
    if let Ok(h) = serde_json::from_slice::<Holders>(&bytes) {
        return h;
    }
    match serde_json::from_slice::<BTreeMap<String, PathBuf>>(&bytes) {
        Ok(flat) => {
            let mut h = Holders::default();
            for (name, dir) in flat {
                let own = is_gone(&dir)
                    || manifest::salvage_identity(
                        &read_at_most(&dir.join("plugin.json"), MANIFEST_MAX).unwrap_or_default(),
                    )
                    .0
                    .as_deref()
                        == Some(&name);
                if own {
                    h.plugins.insert(name, dir)
                } else {
                    h.services.insert(name, dir)
                };
            }
            h
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "plugin name holders unreadable, ignored: {e}");
            Holders::default()
        }
    }
}

/// Whether the directory that held a name is gone (no `plugin.json` there any more).
pub fn is_gone(dir: &Path) -> bool {
    !holds_manifest(dir)
}

/// Whether `dir` is a plugin's directory: a `plugin.json` is there, of whatever kind. One that
/// is not a regular file (a FIFO, a dangling link) is reported when it is read, not passed over
/// in silence as if the directory held no plugin.
pub fn holds_manifest(dir: &Path) -> bool {
    dir.is_dir() && std::fs::symlink_metadata(dir.join("plugin.json")).is_ok()
}

/// Records who holds each name after a scan, over `holders` (those the scan went by): each
/// plugin's directory under its own name (not the duplicates, listed as `NAME@DIR`); a plugin
/// name not found this time keeps its directory, in case it comes back beside a newcomer, unless
/// `release_gone` and that directory is gone; each service a plugin provides under another name
/// (one no plugin holds), held by the plugin that held it while it still provides it, else by
/// the first that does. Written whole, then renamed into place; a failure is said on stderr and
/// changes nothing else. Returns what it recorded.
pub fn write_holders(path: &Path, holders: &Holders, found: &[Found], release_gone: bool) -> Holders {
    let mut holders = holders.clone();
    if release_gone {
        holders.plugins.retain(|_, dir| !is_gone(dir));
    }
    let owners: Vec<&Found> = found.iter().filter(|f| !f.name.contains('@')).collect();
    for f in &owners {
        holders.plugins.insert(f.name.clone(), f.dir.clone());
        holders.services.remove(&f.name);
    }
    let provides =
        |f: &Found, service: &str| f.manifest.as_ref().is_ok_and(|m| m.provides.iter().any(|p| p.name == service));
    for f in &owners {
        let Ok(m) = &f.manifest else { continue };
        for p in m.provides.iter().filter(|p| p.name != m.name && !holders.plugins.contains_key(&p.name)) {
            let still_held = holders
                .services
                .get(&p.name)
                .is_some_and(|h| owners.iter().any(|o| o.dir == *h && provides(o, &p.name)));
            if !still_held {
                holders.services.insert(p.name.clone(), f.dir.clone());
            }
        }
    }
    let text = serde_json::to_vec_pretty(&holders).expect("UNWRAP: maps of strings serialize");
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), "cannot record plugin name holders: {e}");
    }
    holders
}

/// Loads one plugin directory.
pub fn load(dir: &Path, plugind_version: &semver::Version) -> Found {
    let file = dir.join("plugin.json");
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let text = match read_manifest(&file) {
        Ok(t) if t.len() as u64 > MANIFEST_MAX => {
            return Found {
                dir: dir.to_path_buf(),
                name: dir_name,
                manifest: Err(format!("{}: expected a manifest of at most 1 MiB, found a larger file", file.display())),
                version: String::new(),
            }
        }
        Ok(t) => t,
        Err(e) => {
            return Found {
                dir: dir.to_path_buf(),
                name: dir_name,
                manifest: Err(format!("{}: cannot read: {e}", file.display())),
                version: String::new(),
            }
        }
    };
    // A byte-order mark (some Windows editors write one) is not JSON: read past it.
    let text = text.strip_prefix(UTF8_BOM).unwrap_or(&text);
    let (salvaged_name, salvaged_version) = manifest::salvage_identity(text);
    let name = salvaged_name.filter(|n| manifest::is_valid_name(n)).unwrap_or(dir_name);
    let version = salvaged_version.unwrap_or_default();
    let manifest =
        Manifest::parse(text).map_err(|e| format!("{}: {e}", file.display())).and_then(|m| match &m.engines_plugind {
            Some(req) if !req.matches(plugind_version) => Err(format!(
                "{}: /engines/plugind: expected a range matching plugind {plugind_version}, found {:?}",
                file.display(),
                req.to_string()
            )),
            // Every schema of the catalog compiles, or the plugin does not load.
            _ => crate::catalog::check_manifest(&m)
                .map_err(|e| e.to_string())
                .and_then(|()| within_host_limits(&m))
                .and_then(|()| watch_globs_compile(&m))
                .map(|()| m)
                .map_err(|e| format!("{}: {e}", file.display())),
        });
    let manifest = manifest.map(|mut m| {
        m.warnings.extend(main_warnings(dir, &m));
        m
    });
    if let Ok(m) = &manifest {
        for w in &m.warnings {
            tracing::warn!(plugin = %m.name, file = %file.display(), "{w}");
        }
    }
    Found { dir: dir.to_path_buf(), name, manifest, version }
}

/// Opens `path` for reading if it is a regular file, never opening anything else: a FIFO shipped
/// as a plugin's `main` (`cp -r` and `tar` keep one), or made there by a `filesystem` plugin,
/// blocked a plain `File::open` until a writer came, on the thread that loads manifests: plugind
/// froze, SIGTERM included (audit 20). And opening is not harmless for every file: a `main` that
/// is a link to `/dev/watchdog` arms the host's watchdog when opened, as root, even non-blocking
/// (audit 21). So the path is resolved once to an `O_PATH` descriptor, which opens nothing, its
/// type checked, and only a regular file is opened, through that descriptor (`/proc/self/fd`:
/// the same file, not the path again, which a plugin could swap in between). `follow`: whether a
/// symbolic link is followed.
pub fn open_regular(path: &Path, follow: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_PATH | if follow { 0 } else { libc::O_NOFOLLOW };
    let located = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    if !located.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file (a FIFO, socket, device or directory)", path.display()),
        ));
    }
    // Kernel files pass for regular ones, and reading some is not harmless either: a `main`
    // linked to `/proc/kmsg` had plugind consume the kernel's log messages at every scan
    // (audit 21). No plugin's file lives in /proc, /sys or their kin.
    if on_kernel_filesystem(&located) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file (a kernel file, in /proc or /sys)", path.display()),
        ));
    }
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&located));
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(through)
}

/// Whether `file` is on a filesystem of the kernel's own (proc, sysfs, debugfs, tracefs,
/// securityfs, configfs, cgroup, bpf), whose files look regular and act on reads.
fn on_kernel_filesystem(file: &std::fs::File) -> bool {
    use nix::sys::statfs::{self as fs, fstatfs};
    /// `CONFIGFS_MAGIC` (linux/magic.h), which nix does not name.
    const CONFIGFS_MAGIC: fs::FsType = fs::FsType(0x6265_6570);
    const KERNEL: [fs::FsType; 9] = [
        fs::PROC_SUPER_MAGIC,
        fs::SYSFS_MAGIC,
        fs::DEBUGFS_MAGIC,
        fs::TRACEFS_MAGIC,
        fs::SECURITYFS_MAGIC,
        CONFIGFS_MAGIC,
        fs::CGROUP_SUPER_MAGIC,
        fs::CGROUP2_SUPER_MAGIC,
        fs::BPF_FS_MAGIC,
    ];
    fstatfs(file).is_ok_and(|st| KERNEL.contains(&st.filesystem_type()))
}

/// What would make `main` fail at every start, or run under another interpreter than its author
/// meant, seen before it runs: a file plugind executes directly that is not executable, a `.sh`
/// file written for bash (plugind runs `.sh` with `sh`, which is often dash), a script saved
/// with Windows line endings.
fn main_warnings(dir: &Path, m: &Manifest) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let (None, Some(main)) = (&m.command, &m.main) else { return Vec::new() };
    let path = dir.join(main);
    let Ok(meta) = std::fs::metadata(&path) else { return Vec::new() };
    let ext = Path::new(main).extension().and_then(|e| e.to_str()).unwrap_or("");
    if !meta.is_file() {
        return vec![format!(
            "/main: {main} is not a regular file (a FIFO, socket, device or directory): it cannot run"
        )];
    }
    let first = first_line(&path);
    let shebang = first.strip_prefix("#!").map(str::trim);
    match ext {
        "py" | "js" | "mjs" | "cjs" => Vec::new(),
        _ if first.ends_with("\r\n") => vec![format!(
            "/main: {main} has Windows line endings (\\r\\n): {}; convert it (`dos2unix {main}`, or \
             `sed -i 's/\\r$//' {main}`)",
            if shebang.is_some() {
                "the kernel looks for an interpreter whose name ends with \\r, and finds none"
            } else {
                "the shell reads \\r as part of every command"
            }
        )],
        "sh" => match shebang.and_then(|s| ["bash", "zsh", "ksh"].into_iter().find(|sh| s.contains(sh))) {
            Some(shell) => vec![format!(
                "/main: {main} begins with #!{}, but plugind runs a .sh main with sh, which may not be {shell}: \
                 set \"command\": [\"{shell}\", \"{main}\"] to run it with {shell}",
                shebang.unwrap_or_default()
            )],
            None => Vec::new(),
        },
        _ if meta.is_file() && meta.permissions().mode() & 0o111 == 0 => vec![format!(
            "/main: {main} is not executable, and plugind executes a main that is not .py, .js or .sh directly: \
             `chmod +x` it (a script also needs a #! line), or set \"command\" (e.g. [\"perl\", \"{main}\"])"
        )],
        _ => Vec::new(),
    }
}

/// The first line of `path` (its first 256 bytes at most, its `\n` kept); empty when it cannot
/// be read as a regular file.
pub fn first_line(path: &Path) -> String {
    use std::io::{BufRead, BufReader, Read};
    let mut first = String::new();
    if let Ok(f) = open_regular(path, true) {
        let _ = BufReader::new(f.take(256)).read_line(&mut first);
    }
    first
}

/// Most bytes of a `plugin.json`: a sparse 3 GB file (4 KB on disk) was read whole, and plugind
/// grew to the OOM killer before it listened (audit 16).
const MANIFEST_MAX: u64 = 1 << 20;

/// The first `max + 1` bytes of `path` at most (one more than allowed says it is too long).
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    read_opened_at_most(open_regular(path, true)?, max)
}

/// [`read_at_most`] of a file already open.
fn read_opened_at_most(file: std::fs::File, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// A manifest's text (its first `MANIFEST_MAX + 1` bytes at most), from a file that is its own:
/// not a symbolic link, nor a writable file with other hard links. The mount namespace makes
/// `plugin.json` read-only to its plugin, but only at that path: through a link's target (a
/// directory it may rename, another name of the same file) a plugin with `filesystem` would
/// rewrite its own manifest and grant itself permissions at the next reload (audit 17).
fn read_manifest(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    if std::fs::symlink_metadata(path)?.is_symlink() {
        let to = std::fs::read_link(path).map(|t| format!(" (to {})", t.display())).unwrap_or_default();
        return Err(refused(format!(
            "it is a symbolic link{to}: the manifest must be a file of the plugin's directory, as a plugin could \
             change what a link points to, and so its own permissions"
        )));
    }
    // Not followed: a link swapped in meanwhile is refused as not a regular file.
    let file = open_regular(path, false).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            refused("it is not a regular file (a FIFO, socket or device)".to_owned())
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if meta.nlink() > 1 && meta.mode() & 0o222 != 0 {
        return Err(refused(format!(
            "it has {} hard links and is writable: through another of its names a plugin could rewrite its own \
             manifest; copy it (or make it read-only)",
            meta.nlink()
        )));
    }
    read_opened_at_most(file, MANIFEST_MAX)
}

/// The UTF-8 byte-order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a manifest asks that this host cannot give, named like a manifest error: an
/// `open_files` above plugind's own hard limit, which no child of plugind may raise its limit
/// past (every start would fail with "Operation not permitted").
fn within_host_limits(m: &Manifest) -> Result<(), String> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, u64::MAX));
    if m.limits.open_files > hard {
        return Err(format!(
            "field /limits/open_files: expected at most {hard} (plugind's own hard limit on open files; raise it with \
             LimitNOFILE= in its unit or `ulimit -Hn`), found {}",
            m.limits.open_files
        ));
    }
    Ok(())
}

/// A `watch` glob that does not compile is a load error: it would only be warned about at every
/// file event, and the plugin would never reload on the files it meant.
fn watch_globs_compile(m: &Manifest) -> Result<(), String> {
    for (i, glob) in m.watch.iter().enumerate() {
        if let Err(e) = globset::Glob::new(glob.trim_start_matches("./")) {
            return Err(format!("field /watch/{i}: expected a glob, found {glob:?} ({})", e.kind()));
        }
    }
    Ok(())
}

/// The load error of the manifest in `dir` whose required dependencies close `cycle` (as
/// [`find_cycles`] writes it): a rescan and a reload say the same.
pub fn cycle_error(dir: &Path, cycle: &str) -> String {
    format!("{}: /dependencies/required: dependency cycle {cycle}", dir.join("plugin.json").display())
}

/// Plugins on a cycle of required dependencies, each with the cycle as text (`a → b → a`).
///
/// An edge goes from a plugin to every plugin that declares (by name or `provides`) a service it
/// requires. Services a plugin only returns from `register` are unknown before it starts and so
/// cannot form a cycle here.
pub fn find_cycles(plugins: &[(&str, &Manifest)]) -> BTreeMap<String, String> {
    let providers = |dep: &plugind_protocol::manifest::Dependency| -> Vec<usize> {
        plugins.iter().enumerate().filter(|(_, (_, m))| m.declares_service(&dep.name)).map(|(i, _)| i).collect()
    };
    let edges: Vec<Vec<usize>> =
        plugins.iter().map(|(_, m)| m.required.iter().flat_map(&providers).collect()).collect();
    let mut out = BTreeMap::new();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; plugins.len()];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        mark: &mut [u8],
        path: &mut Vec<usize>,
        names: &dyn Fn(usize) -> String,
        out: &mut BTreeMap<String, String>,
    ) {
        mark[n] = 1;
        path.push(n);
        for &next in &edges[n] {
            if mark[next] == 1 {
                let start = path.iter().position(|&p| p == next).unwrap_or(0);
                let cycle: Vec<String> =
                    path[start..].iter().map(|&i| names(i)).chain(std::iter::once(names(next))).collect();
                let text = cycle.join(" → ");
                for &i in &path[start..] {
                    out.entry(names(i)).or_insert_with(|| text.clone());
                }
            } else if mark[next] == 0 {
                visit(next, edges, mark, path, names, out);
            }
        }
        path.pop();
        mark[n] = 2;
    }
    let names = |i: usize| plugins[i].0.to_owned();
    for n in 0..plugins.len() {
        if mark[n] == 0 {
            visit(n, &edges, &mut mark, &mut path, &names, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, requires: &[&str]) -> Manifest {
        Manifest::from_value(
            &serde_json::json!({"name": name, "version": "1.0.0", "main": "x", "dependencies": {"required": requires}}),
        )
        .expect("valid test manifest")
    }

    /// Whether anything opened `path` (not `O_PATH`) since the watch began, per inotify.
    fn opened_while<T>(path: &Path, f: impl FnOnce() -> T) -> (bool, T) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on a descriptor this function owns and a buffer it sized.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0);
            assert!(libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) >= 0);
            let out = f();
            let mut buf = [0u8; 4096];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            (n > 0, out)
        }
    }

    /// A `main` that is a FIFO, or a link to a device (`/dev/watchdog` arms the host's watchdog
    /// when opened): refused without being opened (audit 21). A regular file still opens.
    #[test]
    fn open_regular_opens_nothing_but_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("main");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        for path in [&fifo, &link] {
            let (opened, r) = opened_while(&fifo, || open_regular(path, true));
            assert!(r.unwrap_err().to_string().contains("is not a regular file"));
            assert!(!opened, "{} was opened to find it is not a regular file", path.display());
        }
        let file = dir.path().join("main.py");
        std::fs::write(&file, "print(1)").unwrap();
        let (opened, r) = opened_while(&file, || std::io::read_to_string(open_regular(&file, true).unwrap()));
        assert_eq!(r.unwrap(), "print(1)");
        assert!(opened, "the watch sees an open");
        assert!(open_regular(&link, false).is_err(), "a link is not followed when asked not to");
        // A kernel file looks regular, and reading some consumes what they hold (/proc/kmsg).
        let kernel = open_regular(Path::new("/proc/self/status"), true).unwrap_err().to_string();
        assert!(kernel.contains("a kernel file"), "{kernel}");
    }

    #[test]
    fn cycle_is_named_on_every_member_and_bystanders_are_spared() {
        let (a, b, c, d) = (m("a", &["b"]), m("b", &["c@^1"]), m("c", &["a"]), m("d", &["a"]));
        let found = find_cycles(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found["a"], "a → b → c → a");
        assert!(found["b"].contains("a → b → c → a"));
        assert!(!found.contains_key("d"));
    }

    #[test]
    fn self_dependency_is_a_cycle_and_a_chain_is_not() {
        let s = m("s", &["s"]);
        assert_eq!(find_cycles(&[("s", &s)])["s"], "s → s");
        let (x, y) = (m("x", &["y"]), m("y", &[]));
        assert!(find_cycles(&[("x", &x), ("y", &y)]).is_empty());
    }
}
