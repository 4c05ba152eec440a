//! Podman with runc, configured from files of this task's own (never /etc): containers,
//! networks and images made here are recorded and removed when [`Podman`] is dropped,
//! whatever happened before (each container's log is kept, as `<name>.log` beside the
//! configuration).
//!
//! Two network backends from one podman: netavark (bridge networks, veths on a Linux
//! bridge) and CNI (Debian's containernetworking-plugins: the `ptp` plugin gives each
//! container a routed veth pair, as kindnet does). Each has its containers.conf; the
//! CNI one sets `network_backend = "cni"` and a network directory of this task's, where
//! the ptp network is a conflist.

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};
use lab::exec;
use serde_json::json;

/// One of podman's network backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Netavark,
    Cni,
}

pub struct Podman {
    dir: PathBuf,
    prefix: String,
    made: RefCell<Made>,
}

/// What this run created, in creation order.
#[derive(Default)]
struct Made {
    containers: Vec<(Backend, String)>,
    networks: Vec<(Backend, String)>,
    images: Vec<String>,
    files: Vec<PathBuf>,
}

impl Podman {
    /// Writes the two containers.conf files under `dir`; names of what it creates start
    /// with `prefix`.
    pub fn new(dir: &Path, prefix: &str) -> Result<Podman> {
        std::fs::create_dir_all(dir.join("cni.d"))?;
        // The machine's defaults fail here: default ulimits need CAP_SYS_RESOURCE to raise
        // RLIMIT_NOFILE, and crun fails on hybrid cgroups (docs/development.md, "Podman").
        let common = "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n";
        std::fs::write(dir.join("containers.conf"), common)?;
        std::fs::write(
            dir.join("containers-cni.conf"),
            format!(
                "{common}\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n",
                dir.join("cni.d").display()
            ),
        )?;
        Ok(Podman {
            dir: dir.to_owned(),
            prefix: prefix.to_owned(),
            made: RefCell::default(),
        })
    }

    /// Removes what runs of this task that are gone (killed, interrupted) left behind:
    /// containers, networks and images whose names carry `<tag><pid>` of a dead process.
    pub fn remove_stale(&self, tag: &str) {
        let dead = |name: &str| {
            let Some(rest) = name.trim_start_matches("localhost/").strip_prefix(tag) else {
                return false;
            };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !pid.is_empty()
                && pid != std::process::id().to_string()
                && !Path::new("/proc").join(&pid).exists()
        };
        let list = |backend: Backend, args: &[&str]| -> Vec<String> {
            let mut cmd = self.command(backend);
            cmd.args(args).stdin(Stdio::null());
            cmd.output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| dead(l))
                .collect()
        };
        let mut made = self.made.borrow_mut();
        for backend in [Backend::Netavark, Backend::Cni] {
            for name in list(backend, &["ps", "--all", "--format", "{{.Names}}"]) {
                made.containers.push((backend, name));
            }
        }
        for name in list(
            Backend::Netavark,
            &["network", "ls", "--format", "{{.Name}}"],
        ) {
            made.networks.push((Backend::Netavark, name));
        }
        for name in list(
            Backend::Netavark,
            &["images", "--format", "{{.Repository}}:{{.Tag}}"],
        ) {
            made.images.push(name);
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.join("cni.d")) {
            for entry in entries.flatten() {
                if dead(&entry.file_name().to_string_lossy()) {
                    made.files.push(entry.path());
                }
            }
        }
        drop(made);
        if !self.made.borrow().containers.is_empty() || !self.made.borrow().networks.is_empty() {
            println!("   removing what an interrupted run left behind");
        }
        self.clean_up();
    }

    /// `podman` with the backend's configuration.
    pub fn command(&self, backend: Backend) -> Command {
        let conf = match backend {
            Backend::Netavark => "containers.conf",
            Backend::Cni => "containers-cni.conf",
        };
        let mut cmd = exec::command("podman", None::<&str>);
        cmd.env("CONTAINERS_CONF", self.dir.join(conf));
        cmd
    }

    fn run<const N: usize>(&self, backend: Backend, args: [&str; N]) -> Result<String> {
        exec::run(self.command(backend).args(args))
    }

    /// A name of this run's.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// `podman load` of a docker-archive; returns the image's name.
    pub fn load(&self, archive: &Path) -> Result<String> {
        let out = exec::run(
            self.command(Backend::Netavark)
                .arg("load")
                .arg("--input")
                .arg(archive),
        )?;
        // "Loaded image: docker.io/netprobe/probe-agent:0.1.0" (podman 4.3 says "image(s)"
        // when several).
        let name = out
            .lines()
            .find_map(|l| {
                l.split_once("Loaded image")?
                    .1
                    .split_once(": ")
                    .map(|x| x.1)
            })
            .map(|n| n.trim().to_owned())
            .with_context(|| format!("podman load said nothing of the image: {out}"))?;
        self.made.borrow_mut().images.push(name.clone());
        Ok(name)
    }

    /// A scratch image made of Debian's static busybox (`/bin/busybox` and its applets as
    /// symlinks), imported from a tarball: no registry is needed.
    pub fn busybox_image(&self) -> Result<String> {
        let busybox = Path::new("/bin/busybox");
        let bytes = std::fs::read(busybox)
            .with_context(|| format!("reading {} (busybox-static)", busybox.display()))?;
        let tarball = self.dir.join("busybox.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&tarball)?);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        tar.append_data(&mut header, "bin/busybox", bytes.as_slice())?;
        for applet in ["sh", "nc", "nslookup", "sleep", "cat", "echo"] {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_mode(0o777);
            tar.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
        }
        tar.finish()?;
        drop(tar);
        let name = format!("localhost/{}:busybox", self.prefix);
        exec::run(
            self.command(Backend::Netavark)
                .args(["import", "--change", "CMD [\"/bin/sh\"]"])
                .arg(&tarball)
                .arg(&name),
        )?;
        self.made.borrow_mut().images.push(name.clone());
        Ok(name)
    }

    /// A netavark bridge network on `subnet`.
    pub fn bridge_network(&self, what: &str, subnet: &str) -> Result<String> {
        let name = self.name(what);
        self.run(
            Backend::Netavark,
            [
                "network", "create", "--driver", "bridge", "--subnet", subnet, &name,
            ],
        )?;
        self.made
            .borrow_mut()
            .networks
            .push((Backend::Netavark, name.clone()));
        Ok(name)
    }

    /// A CNI `ptp` network on `subnet` (host-local addresses, routed veths).
    pub fn ptp_network(&self, what: &str, subnet: &str) -> Result<String> {
        let name = self.name(what);
        let conflist = json!({
            "cniVersion": "0.4.0",
            "name": name,
            "plugins": [{
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.dir.join("cni-ipam"),
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        });
        let path = self.dir.join("cni.d").join(format!("{name}.conflist"));
        std::fs::write(&path, serde_json::to_string_pretty(&conflist)?)?;
        self.made.borrow_mut().files.push(path);
        self.made
            .borrow_mut()
            .networks
            .push((Backend::Cni, name.clone()));
        Ok(name)
    }

    /// `podman run --detach --name <prefix>-<what> <flags> <image> <args>`; returns the
    /// container's name. The command line is printed.
    pub fn start(
        &self,
        backend: Backend,
        what: &str,
        flags: &[String],
        image: &str,
        args: &[String],
    ) -> Result<String> {
        let name = self.name(what);
        let mut cmd = self.command(backend);
        cmd.args(["run", "--detach", "--name", &name])
            .args(flags)
            .arg(image)
            .args(args);
        println!("   $ {}", exec::describe(&cmd));
        // Recorded first: a container may exist although `run` failed (created, not started).
        self.made
            .borrow_mut()
            .containers
            .push((backend, name.clone()));
        exec::run(&mut cmd)?;
        Ok(name)
    }

    /// `podman exec <name> <args>`, its output whatever its exit status.
    pub fn exec(&self, backend: Backend, name: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(backend);
        cmd.arg("exec").arg(name).args(args).stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("running `{}`", exec::describe(&cmd)))
    }

    /// A field of `podman inspect` (a Go template).
    pub fn inspect(&self, backend: Backend, name: &str, format: &str) -> Result<String> {
        Ok(self
            .run(backend, ["inspect", "--format", format, name])?
            .trim()
            .to_owned())
    }

    /// The container's main process, as the host sees it.
    pub fn pid(&self, backend: Backend, name: &str) -> Result<u32> {
        let pid = self.inspect(backend, name, "{{.State.Pid}}")?;
        match pid.parse() {
            Ok(0) | Err(_) => bail!("container {name} has no process (pid {pid:?})"),
            Ok(pid) => Ok(pid),
        }
    }

    /// Whether the container is running.
    pub fn running(&self, backend: Backend, name: &str) -> bool {
        self.inspect(backend, name, "{{.State.Running}}")
            .is_ok_and(|s| s == "true")
    }

    /// What the container wrote (stdout and stderr).
    pub fn logs(&self, backend: Backend, name: &str) -> String {
        match self.command(backend).args(["logs", name]).output() {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(no logs: {e})"),
        }
    }

    /// `podman stop`: SIGTERM, SIGKILL after `grace_s` seconds (the container stays, for
    /// its exit code and logs).
    pub fn stop(&self, backend: Backend, name: &str, grace_s: u64) -> Result<()> {
        self.run(backend, ["stop", "--time", &grace_s.to_string(), name])?;
        Ok(())
    }

    /// The container's IPv4 address on its network.
    pub fn ipv4(&self, backend: Backend, name: &str) -> Result<std::net::Ipv4Addr> {
        let ip = self.inspect(
            backend,
            name,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )?;
        ip.parse()
            .with_context(|| format!("container {name} has no IPv4 address ({ip:?})"))
    }

    /// The host side of the container's `eth0`: the host interface whose index is
    /// eth0's peer link.
    pub fn host_veth(&self, backend: Backend, name: &str) -> Result<String> {
        let out = self.exec(backend, name, &["cat", "/sys/class/net/eth0/iflink"])?;
        let index: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("eth0's peer in {name}"))?;
        for entry in std::fs::read_dir("/sys/class/net")? {
            let entry = entry?;
            let ifindex = std::fs::read_to_string(entry.path().join("ifindex")).unwrap_or_default();
            if ifindex.trim().parse() == Ok(index) {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        bail!("no host interface has index {index} (the peer of {name}'s eth0)")
    }

    /// Removes everything this run made (containers, networks, images, files); errors
    /// are printed, not returned: it runs on every exit path.
    fn clean_up(&self) {
        let made = std::mem::take(&mut *self.made.borrow_mut());
        let quiet = |backend: Backend, args: &[&str]| {
            let mut cmd = self.command(backend);
            cmd.args(args).stdin(Stdio::null());
            match cmd.output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "clean-up: `{}` failed: {}",
                    exec::describe(&cmd),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("clean-up: `{}`: {e}", exec::describe(&cmd)),
            }
        };
        for (backend, name) in made.containers.iter().rev() {
            // Kept for whoever reads why a run failed: the agent's log above all.
            let log = self.dir.join(format!("{name}.log"));
            if let Err(e) = std::fs::write(&log, self.logs(*backend, name)) {
                eprintln!("clean-up: writing {}: {e}", log.display());
            }
            quiet(
                *backend,
                &["rm", "--force", "--time", "0", "--ignore", name],
            );
        }
        for (backend, name) in made.networks.iter().rev() {
            if *backend == Backend::Netavark {
                let bridge = self
                    .run(
                        *backend,
                        [
                            "network",
                            "inspect",
                            "--format",
                            "{{.NetworkInterface}}",
                            name,
                        ],
                    )
                    .map(|b| b.trim().to_owned());
                quiet(*backend, &["network", "rm", "--force", name]);
                // netavark removes the bridge with the last container it tears down; one
                // whose containers went with a killed run keeps it, and its subnet.
                if let Ok(bridge) = bridge
                    && !bridge.is_empty()
                    && Path::new("/sys/class/net").join(&bridge).exists()
                {
                    let mut del = exec::command("ip", ["link", "del", bridge.as_str()]);
                    if let Err(e) = exec::run(&mut del) {
                        eprintln!("clean-up: {e:#}");
                    }
                }
            }
        }
        for image in made.images.iter().rev() {
            quiet(Backend::Netavark, &["rmi", "--force", "--ignore", image]);
        }
        for file in &made.files {
            if let Err(e) = std::fs::remove_file(file) {
                eprintln!("clean-up: removing {}: {e}", file.display());
            }
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.clean_up();
    }
}
