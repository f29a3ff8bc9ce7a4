//! Guards the `cairn` command as a user meets it: `add --only-hash` prints
//! the CID IPFS would (with `--cid-version 0`, kubo's `Qm…`), CAR files round-trip with the reference tools, and
//! bad input gets a clear error and a failing exit code.

use std::fs;
use std::process::{Command, Output};

use anyhow::Result;
use cairn_tests::reference;

fn cairn(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()?)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn add_only_hash_prints_the_ipfs_cid() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("f");
    fs::write(&file, vec![42u8; 600_000])?;
    let dir = tmp.path().join("d");
    fs::create_dir(&dir)?;
    fs::write(dir.join("x"), b"x")?;

    let out = cairn(&["add", "--only-hash", file.to_str().unwrap_or_default()])?;
    assert!(out.status.success());
    assert_eq!(stdout(&out), reference::hash_files(&[&file])?[0]);

    let out = cairn(&["add", "-n", "-r", dir.to_str().unwrap_or_default()])?;
    assert!(out.status.success());
    assert_eq!(stdout(&out), reference::hash_dir(&dir)?);

    // As `ipfs add` without flags: `Qm…`.
    let v0 = ["add", "-n", "--cid-version", "0"];
    let out = cairn(&[&v0[..], &[file.to_str().unwrap_or_default()]].concat())?;
    assert!(out.status.success());
    assert_eq!(stdout(&out), reference::hash_files_as(&[&file], true)?[0]);
    let out = cairn(&[&v0[..], &["-r", dir.to_str().unwrap_or_default()]].concat())?;
    assert!(out.status.success());
    assert_eq!(stdout(&out), reference::hash_dir_as(&dir, true)?);
    assert!(stdout(&out).starts_with("Qm"));
    Ok(())
}

#[test]
fn car_create_is_read_by_the_reference_and_verify_catches_tampering() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("f");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(&file, &data)?;
    let car = tmp.path().join("f.car");
    let car_str = car.to_str().unwrap_or_default();
    let out = cairn(&[
        "car",
        "create",
        file.to_str().unwrap_or_default(),
        "-o",
        car_str,
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = reference::read_car(&car)?;
    assert_eq!(summary.roots, [stdout(&out)]);

    assert!(cairn(&["car", "verify", car_str])?.status.success());
    let mut bytes = fs::read(&car)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&car, &bytes)?;
    let out = cairn(&["car", "verify", car_str])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its CID"));
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("missing");
    let out = cairn(&["add", "-n", missing.to_str().unwrap_or_default()])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    let out = cairn(&["add", "-n", tmp.path().to_str().unwrap_or_default()])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use -r"));

    let not_car = tmp.path().join("x.car");
    fs::write(&not_car, b"\x05hello")?;
    let out = cairn(&["car", "verify", not_car.to_str().unwrap_or_default()])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAR header"));

    // Refused before any network is tried (none is given here).
    let car = not_car.to_str().unwrap_or_default();
    let out = cairn(&["add", "--cid-version", "0", "--car", car])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a CAR names its own blocks"));
    let out = cairn(&["add", "-n", "--cid-version", "2", car])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 is not in 0..=1"));
    Ok(())
}
