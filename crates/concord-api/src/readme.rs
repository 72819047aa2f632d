//! README.md lists every error code (the table under "Error codes"), with its HTTP
//! statuses, and no code that does not exist.

use std::collections::BTreeMap;

use crate::ErrorCode;

/// The rows of the error-code table: code -> statuses.
fn readme_codes(readme: &str) -> BTreeMap<String, Vec<u16>> {
    let start = readme.find("Error codes").expect("README.md has an \"Error codes\" table");
    let mut rows = BTreeMap::new();
    let table = readme[start..].lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|'));
    for line in table.skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let code = cells[1].trim_matches('`').to_string();
        let statuses = cells[2].split(',').map(|s| s.trim().parse().expect("a status number")).collect();
        assert!(rows.insert(code.clone(), statuses).is_none(), "{code} is listed twice");
    }
    rows
}

#[test]
fn readme_lists_every_error_code_and_no_other() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let listed = readme_codes(&readme);
    for &code in ErrorCode::ALL {
        let statuses = listed.get(code.as_str()).unwrap_or_else(|| panic!("README.md does not list {code}"));
        assert_eq!(statuses.as_slice(), code.statuses(), "README.md: the statuses of {code}");
    }
    for name in listed.keys() {
        assert!(ErrorCode::parse(name).is_some(), "README.md lists {name:?}, which is no ErrorCode");
    }
}
