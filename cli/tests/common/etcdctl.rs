//! Running Debian's real `etcdctl` (v3.4) against a test cluster, with the
//! admin's client certificate from the shared PKI.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The `etcdctl` binary on PATH; fails the test when it is missing.
pub fn etcdctl_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcdctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcdctl is not on PATH: install the etcd-client package \
                 (apt-get install etcd-client) to run these tests"
            )
        })
}

/// Output of one etcdctl run.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn expect_ok(self, what: &str) -> String {
        assert!(
            self.ok,
            "etcdctl {what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

pub fn command(endpoints: &str) -> Command {
    let mut cmd = Command::new(etcdctl_bin());
    // TLS with the admin's client certificate, as the client port demands.
    let pki = super::shared_pki();
    cmd.env("ETCDCTL_API", "3")
        .env("ETCDCTL_CACERT", pki.join("ca.crt"))
        .env("ETCDCTL_CERT", pki.join("admin.crt"))
        .env("ETCDCTL_KEY", pki.join("admin.key"))
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .kill_on_drop(true);
    cmd
}

/// Runs `etcdctl --endpoints=<endpoints> <args>` with `stdin` as input.
pub async fn ctl_on(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = command(endpoints);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(input.as_bytes()).await.expect("write stdin");
        drop(si);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within 30s"))
        .expect("etcdctl output");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
