//! The operators' output: one JSON object per line (`--json`), or the same
//! fields as tab-separated columns.

/// Prints `row`: as JSON, or its `columns` in order, tab-separated (a
/// string as is, `null` as `-`).
pub fn print_row(json: bool, columns: &[&str], row: &serde_json::Value) {
    if json {
        println!("{row}");
        return;
    }
    let cells: Vec<String> = columns
        .iter()
        .map(|column| match &row[column] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => "-".to_string(),
            other => other.to_string(),
        })
        .collect();
    println!("{}", cells.join("\t"));
}
