//! `nemo serve` started by a test on a free loopback port (`--port 0`; the address is read
//! from its stderr line `listening on http://ADDR/v1`), and stopped (SIGTERM, then kill)
//! when dropped. Also: finding a Python that has a given module, and running a script
//! there that prints one JSON value on its last line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT/v1`
    pub base: String,
    /// stderr lines so far (for failure messages).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `nemo serve --model MODEL --port 0 ARGS…` and waits until it listens.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = super::nemo_command()
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--port", "0", "--threads", "1"])
            .args(args)
            .env_remove("NEMO_SERVE_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nemo serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx): (_, Receiver<String>) = channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let t0 = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(120).saturating_sub(t0.elapsed())) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        return Server {
                            child,
                            base: rest.trim().to_string(),
                            log,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nemo serve did not start: {:?}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        self.base.trim_end_matches("/v1").to_string()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The value of a metric line `NAME VALUE` (labels included in `name`) in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.origin()))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
        if self.wait(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A Python interpreter that can import `module`: `$var` if set, else `python3`.
pub fn python_with(var: &str, module: &str) -> Option<String> {
    let py = std::env::var(var).unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// Runs `script` with `python`, `env` set; returns the JSON on its last stdout line.
pub fn run_py(python: &str, script: &str, env: &[(&str, &str)]) -> Value {
    let out = Command::new(python)
        .args(["-c", script])
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"))
}
