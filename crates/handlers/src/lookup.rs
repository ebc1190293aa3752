//! A lookup table from a CSV file with a header row: a key column, matched
//! case-insensitively (and ignoring surrounding spaces), and the row's
//! columns for the answer's template.

use std::collections::HashMap;
use std::path::Path;

pub struct Table {
    columns: Vec<String>,
    rows: HashMap<String, Vec<String>>,
    key: String,
}

fn normal(s: &str) -> String {
    s.trim().to_lowercase()
}

impl Table {
    pub fn load(path: &Path, key: &str) -> Result<Table, String> {
        let mut reader = csv::Reader::from_path(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let columns: Vec<String> = reader
            .headers()
            .map_err(|e| format!("{}: no header row: {e}", path.display()))?
            .iter()
            .map(str::to_owned)
            .collect();
        let k = columns.iter().position(|c| c == key).ok_or_else(|| {
            format!(
                "{} has no column {key:?} (columns: {})",
                path.display(),
                columns.join(", ")
            )
        })?;
        let mut rows = HashMap::new();
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|e| format!("{} row {}: {e}", path.display(), i + 2))?;
            let cells: Vec<String> = row.iter().map(str::to_owned).collect();
            if let Some(v) = cells.get(k) {
                rows.entry(normal(v)).or_insert(cells);
            }
        }
        Ok(Table {
            columns,
            rows,
            key: key.to_owned(),
        })
    }

    /// The row for `key` as (column, cell) pairs.
    pub fn get(&self, key: &str) -> Result<Vec<(String, String)>, String> {
        let row = self
            .rows
            .get(&normal(key))
            .ok_or_else(|| format!("no row has {} = {key:?}", self.key))?;
        Ok(self
            .columns
            .iter()
            .cloned()
            .zip(row.iter().cloned())
            .collect())
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}
