//! Network faults between real processes: when the runner is root and
//! `ip netns` works, the whole run re-executes itself inside a network namespace it creates
//! (`medpool-chaos-<pid>`, loopback up) — nodes, forwarder and simulated peers all live on its
//! 127.0.N.x — and partitions and packet loss are iptables rules *inside* that namespace, deleted
//! with it. Elsewhere those scenarios are reported as not run (never passed silently).
//!
//! Nodes' connections to their peers leave from their internal address (`--raft-listen`), so a
//! partition is a pair of rules on source and destination addresses.

use std::net::IpAddr;
use std::process::{Command, ExitStatus, Stdio};

/// The variable that tells a re-executed runner it is inside its namespace (its value: the name).
pub const INSIDE: &str = "MEDPOOL_CHAOS_NETNS";

/// Whether this process runs inside the runner's own namespace.
pub fn inside() -> Option<String> {
    std::env::var(INSIDE).ok().filter(|v| !v.is_empty())
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace this process created; deleted when dropped.
#[derive(Debug)]
pub struct Namespace {
    /// Its name.
    pub name: String,
}

impl Namespace {
    /// Creates `medpool-chaos-<pid>` with loopback up, and checks iptables works in it.
    pub fn create() -> Result<Namespace, String> {
        let name = format!("medpool-chaos-{}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        let ns = Namespace { name };
        run(&[
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ])?;
        run(&[
            "ip", "netns", "exec", &ns.name, "iptables", "-L", "INPUT", "-n",
        ])?;
        Ok(ns)
    }

    /// Runs this executable again, with the same arguments and `seed`, inside the namespace.
    pub fn reexec(&self, seed: &str) -> std::io::Result<ExitStatus> {
        let exe = std::env::current_exe()?;
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(INSIDE, &self.name)
            .env("MEDPOOL_SEED", seed)
            .status()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// iptables rules inside the runner's namespace, each tagged with a comment; [`Firewall::heal`]
/// (and dropping it) deletes every rule it added.
#[derive(Debug, Default)]
pub struct Firewall {
    rules: Vec<Vec<String>>,
}

impl Firewall {
    /// Appends `INPUT <matcher> -m comment --comment medpool-chaos -j DROP`.
    fn drop_input(&mut self, matcher: &[&str]) -> Result<(), String> {
        let mut rule = vec!["INPUT".to_owned()];
        rule.extend(matcher.iter().map(|m| (*m).to_owned()));
        rule.extend(
            ["-m", "comment", "--comment", "medpool-chaos", "-j", "DROP"].map(str::to_owned),
        );
        let mut args = vec!["iptables".to_owned(), "-A".to_owned()];
        args.extend(rule.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)?;
        self.rules.push(rule);
        Ok(())
    }

    /// Drops every packet between `a` and each of `others`, both ways.
    pub fn partition(&mut self, a: IpAddr, others: &[IpAddr]) -> Result<(), String> {
        for b in others {
            for (s, d) in [(a, *b), (*b, a)] {
                self.drop_input(&["-s", &s.to_string(), "-d", &d.to_string()])?;
            }
        }
        Ok(())
    }

    /// Drops UDP datagrams to or from `host` at random with probability `p`.
    pub fn lossy(&mut self, host: IpAddr, p: f64) -> Result<(), String> {
        let (host, p) = (host.to_string(), format!("{p:.3}"));
        for dir in ["-s", "-d"] {
            self.drop_input(&[
                "-p",
                "udp",
                dir,
                &host,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
            ])?;
        }
        Ok(())
    }

    /// Deletes every rule added.
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..).rev() {
            let mut args = vec!["iptables".to_owned(), "-D".to_owned()];
            args.extend(rule);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = run(&refs) {
                eprintln!("could not delete an iptables rule: {e}");
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A small tmpfs mounted on a folder (the namespace's own mount namespace: `ip netns exec` makes
/// one); unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `path` (created).
    pub fn mount(path: &std::path::Path, mib: u32) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let p = path.display().to_string();
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m"),
            "medpool-chaos",
            &p,
        ])?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Writes a filler file until the file system is full; returns its size in bytes.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let Ok(mut f) = std::fs::File::create(self.path.join("filler")) else {
            return 0;
        };
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        for size in [64 * 1024, 512] {
            while f.write_all(&chunk[..size]).is_ok() {
                written += size as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Deletes the filler file.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(&["umount", "-l", &self.path.display().to_string()]);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
