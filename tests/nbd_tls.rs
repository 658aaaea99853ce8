//! NBD over TLS (`nbd_tls*`) with real clients: libnbd's nbdinfo/nbdcopy
//! (`nbds://` URIs with `tls-certificates=DIR`) and qemu's `tls-creds-x509`
//! objects, against a `remote none` primary. Certificates are made in each
//! test with the `openssl` CLI: a small CA signs the server certificate
//! (SAN 127.0.0.1 and localhost, which both clients verify) and two client
//! certificates. A client credentials directory holds `ca-cert.pem`,
//! `client-cert.pem` and `client-key.pem`, the names libnbd and qemu both
//! look for.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hast_testkit::{
    bins, output_text, require_python_nbd, require_tools, run, run_ok, timeout_s, wait_for, Node,
    ResourceSpec, TempDir, MIB, PYTHON,
};
use rand::{RngCore, SeedableRng};

const FILE_SIZE: u64 = 64 * MIB;

/// The certificates of one test.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let certs = Certs {
            dir: TempDir::new(tag),
        };
        let d = certs.dir.path();
        let openssl = |args: &[&str]| {
            run_ok(
                Command::new("openssl").current_dir(d).args(args),
                timeout_s(60),
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hast test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let leaf = |name: &str, cn: &str, ext: &str| {
            std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}-cert.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ]);
        };
        leaf(
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        );
        let client_ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n";
        leaf("pinned", "pinned client", client_ext);
        leaf("other", "other client", client_ext);
        // openssl writes keys 0600 already; hastd refuses keys others can read.
        // Client credential directories as libnbd and qemu expect them.
        for (sub, client) in [
            ("pinned", Some("pinned")),
            ("other", Some("other")),
            ("anon", None),
        ] {
            let cd = d.join(sub);
            std::fs::create_dir_all(&cd).unwrap();
            std::fs::copy(d.join("ca-cert.pem"), cd.join("ca-cert.pem")).unwrap();
            if let Some(c) = client {
                std::fs::copy(d.join(format!("{c}-cert.pem")), cd.join("client-cert.pem")).unwrap();
                std::fs::copy(d.join(format!("{c}-key.pem")), cd.join("client-key.pem")).unwrap();
            }
        }
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `AB:CD:...`, as an operator copies it from openssl.
    fn fingerprint(&self, cert: &str) -> String {
        let out = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
                .arg(self.path(cert)),
            timeout_s(30),
        );
        out.trim()
            .split_once('=')
            .map(|(_, fp)| fp.to_string())
            .unwrap_or_else(|| panic!("no fingerprint in {out:?}"))
    }

    /// hast.conf lines for the server's certificate and key.
    fn server_conf(&self) -> String {
        format!(
            "nbd_tls_cert {}\nnbd_tls_key {}\n",
            self.path("server-cert.pem").display(),
            self.path("server-key.pem").display()
        )
    }
}

/// A node whose config has `tls` (node-level lines) after the testkit's
/// global ones; `r0` promoted, not waited for (the testkit's probe speaks
/// plaintext).
fn tls_node(tag: &str, tls: String) -> Node {
    let node = Node::builder(bins!())
        .tag(tag)
        .resource(ResourceSpec::new("r0", FILE_SIZE))
        .config(move |l| {
            let c = l.default_config();
            // Node-level options go before the first resource section.
            match c.find("\nresource ") {
                Some(at) => format!("{}{}{}", &c[..at + 1], tls, &c[at + 1..]),
                None => format!("{c}{tls}"),
            }
        })
        .start();
    node.hastctl_ok(&["role", "primary", "r0"]);
    node
}

fn nbds(node: &Node, creds: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/r0?tls-certificates={}",
        node.layout().nbd_port,
        creds.display()
    )
}

fn nbdinfo(args: &[&str]) -> Output {
    run(Command::new("nbdinfo").args(args), timeout_s(30))
}

/// Waits until the export answers over TLS; returns its size.
fn wait_tls_export(node: &Node, creds: &Path) -> u64 {
    let uri = nbds(node, creds);
    let mut last = String::new();
    wait_for(timeout_s(30), || {
        let out = nbdinfo(&["--size", &uri]);
        last = output_text(&out);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten()
    })
    .unwrap_or_else(|| {
        panic!(
            "export not served over TLS within 30 s: {last}\n{}",
            node.log()
        )
    })
}

/// `qemu-img`/`qemu-io` arguments that reach r0 over TLS with `creds`.
fn qemu_tls_args(node: &Node, creds: &Path) -> Vec<String> {
    vec![
        "--object".into(),
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        ),
        "--image-opts".into(),
        format!(
            "driver=nbd,host=127.0.0.1,port={},export=r0,tls-creds=tls0",
            node.layout().nbd_port
        ),
    ]
}

fn qemu_io_tls(node: &Node, creds: &Path, cmds: &[&str]) -> Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(qemu_tls_args(node, creds));
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    run(&mut cmd, timeout_s(120))
}

fn qemu_img_info_tls(node: &Node, creds: &Path) -> Output {
    let mut cmd = Command::new("qemu-img");
    cmd.arg("info").args(qemu_tls_args(node, creds));
    run(&mut cmd, timeout_s(60))
}

fn tools() -> bool {
    require_tools(&["openssl", "nbdinfo", "nbdcopy", "qemu-io", "qemu-img"])
}

/// TLS required (the default with a certificate): nbdinfo, nbdcopy and
/// qemu over TLS on TCP, nbdinfo over TLS on the Unix socket; plaintext
/// clients are refused and told why.
#[test]
fn required_tls_serves_tls_clients_and_refuses_plaintext() {
    if !tools() {
        return;
    }
    let certs = Certs::new("nbdtls-req-certs");
    let node = tls_node("nbdtls-req", certs.server_conf());
    let creds = certs.path("anon");
    let datasize = wait_tls_export(&node, &creds);
    assert!(datasize > 0 && datasize <= FILE_SIZE);
    assert!(
        node.log().contains("nbd_tls=required"),
        "startup log says TLS:\n{}",
        node.log()
    );
    let list = node.hastctl_ok(&["list", "r0"]);
    assert!(list.contains("export tls: required"), "{list}");
    assert!(list.contains("export: nbds://127.0.0.1:"), "{list}");

    // nbdinfo: TLS shown, size right.
    let json = run_ok(
        Command::new("nbdinfo").args(["--json", &nbds(&node, &creds)]),
        timeout_s(30),
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("nbdinfo --json");
    assert_eq!(v["TLS"], true, "{json}");
    assert_eq!(
        v["exports"][0]["export-size"].as_u64(),
        Some(datasize),
        "{json}"
    );

    // nbdcopy: 4 MiB of random data in over TLS, the whole export back out.
    let mut data = vec![0u8; 4 * MIB as usize];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut data);
    let src = node.dir().join("src.raw");
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new("nbdcopy").arg(&src).arg(nbds(&node, &creds)),
        timeout_s(120),
    );
    let back = node.dir().join("back.raw");
    run_ok(
        Command::new("nbdcopy").arg(nbds(&node, &creds)).arg(&back),
        timeout_s(120),
    );
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len() as u64, datasize);
    assert!(
        got[..data.len()] == data[..],
        "data read back over TLS differs"
    );

    // qemu with tls-creds: write a pattern, read it back and verify it.
    let out = qemu_io_tls(
        &node,
        &creds,
        &[
            "write -P 0xa5 8M 1M",
            "read -P 0xa5 8M 1M",
            "read -P 0 9M 64k",
        ],
    );
    let text = output_text(&out);
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io over TLS: {text}"
    );
    let out = qemu_img_info_tls(&node, &creds);
    assert!(
        out.status.success() && output_text(&out).contains(&format!("({datasize} bytes)")),
        "qemu-img info over TLS: {}",
        output_text(&out)
    );

    // The Unix socket requires TLS too (libnbd verifies "localhost").
    let sock = node.layout().nbd_socket_dir.join("r0.nbd");
    let unix = format!(
        "nbds+unix:///r0?socket={}&tls-certificates={}",
        sock.display(),
        creds.display()
    );
    let size = run_ok(
        Command::new("nbdinfo").args(["--size", &unix]),
        timeout_s(30),
    );
    assert_eq!(size.trim().parse::<u64>().ok(), Some(datasize));
    let plain_unix = format!("nbd+unix:///r0?socket={}", sock.display());
    assert!(!nbdinfo(&["--size", &plain_unix]).status.success());

    // Plaintext: refused with the reason. qemu prints the server's message;
    // libnbd 1.14's nbdinfo only with LIBNBD_DEBUG=1 (later ones always).
    let plain = node.layout().uri("r0");
    let out = run(
        Command::new("qemu-img").args(["info", &plain]),
        timeout_s(30),
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "plaintext qemu-img served: {text}");
    assert!(text.contains("TLS required"), "{text}");
    let out = run(
        Command::new("nbdinfo")
            .env("LIBNBD_DEBUG", "1")
            .args(["--size", &plain]),
        timeout_s(30),
    );
    let text = output_text(&out);
    assert!(!out.status.success(), "plaintext nbdinfo served: {text}");
    assert!(
        text.contains("server error message: TLS required"),
        "{text}"
    );
    assert!(
        !qemu_io_plain(&plain, &["read 0 4k"]).status.success(),
        "plaintext qemu-io served"
    );
    // A client that skips option haggling (NBD_OPT_EXPORT_NAME at once,
    // which cannot carry an error) is disconnected.
    if require_python_nbd() {
        let out = export_name_client(&node);
        assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    }
    let log = node.log();
    assert!(
        log.contains("tls=true") && !log.contains("tls=false"),
        "only TLS connections reached transmission:\n{log}"
    );
}

/// python3-libnbd without fixed newstyle: libnbd then sends
/// `NBD_OPT_EXPORT_NAME` as its first option. Exit 0 when served, 3 when
/// the connection failed.
fn export_name_client(node: &Node) -> Output {
    let script = format!(
        "import nbd, sys\n\
         h = nbd.NBD()\n\
         h.set_handshake_flags(0)\n\
         h.set_export_name('r0')\n\
         try:\n    h.connect_tcp('127.0.0.1', '{}')\n\
         except nbd.Error as e:\n    print('refused:', e); sys.exit(3)\n\
         print('served, size', h.get_size(), 'protocol', h.get_protocol())\n",
        node.layout().nbd_port
    );
    run(Command::new(PYTHON).args(["-c", &script]), timeout_s(30))
}

fn qemu_io_plain(uri: &str, cmds: &[&str]) -> Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", uri]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    run(&mut cmd, timeout_s(60))
}

/// `nbd_tls optional`: plaintext and TLS clients both served.
#[test]
fn optional_tls_serves_both() {
    if !tools() {
        return;
    }
    let certs = Certs::new("nbdtls-opt-certs");
    let node = tls_node(
        "nbdtls-opt",
        format!("{}nbd_tls optional\n", certs.server_conf()),
    );
    let creds = certs.path("anon");
    let datasize = wait_tls_export(&node, &creds);
    let list = node.hastctl_ok(&["list", "r0"]);
    assert!(list.contains("export tls: optional"), "{list}");
    assert!(list.contains("export: nbd://127.0.0.1:"), "{list}");

    let plain = node.layout().uri("r0");
    let size = run_ok(
        Command::new("nbdinfo").args(["--size", &plain]),
        timeout_s(30),
    );
    assert_eq!(size.trim().parse::<u64>().ok(), Some(datasize));
    // Written in plaintext, read back over TLS.
    let out = qemu_io_plain(&plain, &["write -P 0x3c 0 256k"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = qemu_io_tls(&node, &creds, &["read -P 0x3c 0 256k"]);
    let text = output_text(&out);
    assert!(out.status.success() && !text.contains("failed"), "{text}");
    // The old-style client is served in plaintext too.
    if require_python_nbd() {
        let out = export_name_client(&node);
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    }
    let log = node.log();
    assert!(
        log.contains("tls=true") && log.contains("tls=false"),
        "{log}"
    );
}

/// `nbd_tls_client_fingerprint`: the pinned client certificate gets in,
/// another one (from the same CA) and none at all do not.
#[test]
fn pinned_client_certificate() {
    if !tools() {
        return;
    }
    let certs = Certs::new("nbdtls-pin-certs");
    let fp = certs.fingerprint("pinned-cert.pem");
    let node = tls_node(
        "nbdtls-pin",
        format!("{}nbd_tls_client_fingerprint {fp}\n", certs.server_conf()),
    );
    let pinned = certs.path("pinned");
    let datasize = wait_tls_export(&node, &pinned);
    let list = node.hastctl_ok(&["list", "r0"]);
    assert!(
        list.contains("export tls: required, client certificate pinned"),
        "{list}"
    );
    // Who can reach it says how.
    assert!(
        list.contains("(loopback TCP, TLS required, client certificate pinned)"),
        "{list}"
    );
    let out = qemu_img_info_tls(&node, &pinned);
    assert!(
        out.status.success() && output_text(&out).contains(&format!("({datasize} bytes)")),
        "{}",
        output_text(&out)
    );

    for who in ["other", "anon"] {
        let creds = certs.path(who);
        let out = nbdinfo(&["--size", &nbds(&node, &creds)]);
        assert!(
            !out.status.success(),
            "nbdinfo with the {who} credentials got in: {}",
            output_text(&out)
        );
        let out = qemu_img_info_tls(&node, &creds);
        assert!(
            !out.status.success(),
            "qemu-img with the {who} credentials got in: {}",
            output_text(&out)
        );
    }
    let other_fp = certs.fingerprint("other-cert.pem");
    let log = node.log();
    assert!(
        log.contains(&format!("fingerprint={other_fp}")),
        "the refused certificate's fingerprint is logged:\n{log}"
    );
    assert!(log.contains("peer sent no certificates"), "{log}");
}

/// Bad TLS files stop hastd with the file and line (66 unreadable, 78
/// unusable); a reload with a bad key keeps the running TLS settings.
#[test]
fn bad_tls_files_are_refused_with_file_and_line() {
    if !tools() {
        return;
    }
    let certs = Certs::new("nbdtls-bad-certs");
    let node = tls_node("nbdtls-bad", certs.server_conf());
    let creds = certs.path("anon");
    wait_tls_export(&node, &creds);
    let conf = node.layout().config_path.clone();
    let good = std::fs::read_to_string(&conf).unwrap();
    let line_of = |text: &str, key: &str| {
        1 + text
            .lines()
            .position(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    let cert_line = line_of(&good, "nbd_tls_cert");
    let key_line = line_of(&good, "nbd_tls_key");
    // A second hastd on the same config, checked before it binds anything.
    let try_start = |text: &str| {
        let alt = node.dir().join("alt.conf");
        std::fs::write(&alt, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hastd"));
        cmd.args(["-F", "--node", "nodea", "-c"]).arg(&alt);
        run(&mut cmd, timeout_s(30))
    };
    let missing = good.replace(
        &certs.path("server-cert.pem").display().to_string(),
        &certs.path("missing.pem").display().to_string(),
    );
    let out = try_start(&missing);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(66), "{text}");
    assert!(
        text.contains(&format!("alt.conf:{cert_line}: nbd_tls_cert \"")),
        "{text}"
    );

    // The CA's key is not the server certificate's.
    let mismatched = good.replace(
        &certs.path("server-key.pem").display().to_string(),
        &certs.path("ca-key.pem").display().to_string(),
    );
    let out = try_start(&mismatched);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(&format!("alt.conf:{key_line}: nbd_tls_key \"")),
        "{text}"
    );

    // A certificate file as the key: no private key in it.
    let no_key = good.replace(
        &certs.path("server-key.pem").display().to_string(),
        &certs.path("server-cert.pem").display().to_string(),
    );
    let out = try_start(&no_key);
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));

    // Reload with the mismatched key: refused, TLS keeps working.
    std::fs::write(&conf, &mismatched).unwrap();
    let pid = node.daemon_pid().expect("hastd running");
    // SAFETY: kill(2) on the PID of the hastd this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let refused = wait_for(timeout_s(30), || {
        node.log()
            .contains("reload failed, keeping the running configuration")
            .then_some(())
    });
    assert!(refused.is_some(), "reload not refused:\n{}", node.log());
    wait_tls_export(&node, &creds);
    std::fs::write(&conf, &good).unwrap();
}
