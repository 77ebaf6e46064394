//! Whether a real-kernel test can run here: root and the programs it needs. Under `CI=true` a
//! missing prerequisite fails the test (it never skips there); elsewhere the test prints a loud
//! SKIPPED line and returns. Test-only, so it lives in the test bed, not in the shipped crate.

/// True when running as root with every program in `programs` available. Otherwise the test
/// cannot run: under `CI=true` that is a failure (panic, naming what is missing); elsewhere a
/// loud SKIPPED line is printed and false returned.
pub fn test_prerequisites(test: &str, programs: &[&str]) -> bool {
    let is_root = knat::lab::effective_uid() == Some(0);
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| knat::lab::find_program(p).is_none())
        .collect();
    if is_root && missing.is_empty() {
        return true;
    }
    let why = format!("root: {is_root}, missing programs: {missing:?}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: prerequisites missing under CI=true ({why})");
    }
    eprintln!("\n*** SKIPPED {test}: needs root and {programs:?} ({why}) ***\n");
    false
}
