//! The real kubectl (/usr/bin/kubectl) for end-to-end tests: a runner
//! bound to one kubeconfig, and kubeconfigs from `keel kubeconfig`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl with one kubeconfig.
pub struct Kubectl {
    kubeconfig: PathBuf,
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    /// kubectl's exit code.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path) -> Kubectl {
        assert!(
            Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: install the Debian package kubectl (scripts/test.sh does)"
        );
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    pub fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut c = Command::new(KUBECTL);
        // First, as a global flag: after `--` it would be the command's.
        if !args.iter().any(|a| a.starts_with("--request-timeout")) {
            c.arg("--request-timeout=20s");
        }
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // No cached discovery from another run or another test.
            .env("HOME", self.kubeconfig.parent().unwrap());
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run kubectl");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        let o = child.wait_with_output().unwrap();
        Out {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Starts a long-running kubectl (`port-forward`) with its stdout and
    /// stderr going to `<log>.out` and `<log>.err` and `env` added; no
    /// request timeout, which would cut its streams.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)], log: &Path) -> std::process::Child {
        let file =
            |ext: &str| std::fs::File::create(log.with_extension(ext)).expect("kubectl log file");
        Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.kubeconfig.parent().unwrap())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("err"))
            .spawn()
            .expect("start kubectl")
    }

    /// Runs kubectl, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run_with(args, stdin);
        assert!(o.ok, "kubectl {args:?} failed: {o:?}");
        o.stdout
    }

    /// Runs kubectl, which must fail; its stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run_with(args, stdin);
        assert!(!o.ok, "kubectl {args:?} succeeded: {o:?}");
        o.stderr
    }
}

/// A kubeconfig from `keel kubeconfig` (the admin token by default, or `token`).
pub fn kubeconfig(dir: &Path, api: &str, name: &str, token: Option<&str>) -> PathBuf {
    let mut c = super::common::keel();
    c.args(["kubeconfig", "--api-url", &format!("https://{api}")]);
    if let Some(t) = token {
        c.args(["--token", t, "--user", "viewer"]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "keel kubeconfig: {out:?}");
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("kubeconfig");
    std::fs::write(&p, &out.stdout).unwrap();
    p
}
