//! Server-sent events as OpenAI-compatible servers write them: `data: {json}`
//! lines, events separated by a blank line, `data: [DONE]` at the end.

/// Splits a byte stream into the `data` of each event, across chunk boundaries.
#[derive(Default)]
pub struct SseLines {
    buf: Vec<u8>,
    data: String,
}

impl SseLines {
    /// Feeds bytes; returns the events they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data));
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing here.
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_lines() {
        let mut s = SseLines::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            s.push(b": 1}\n\n: keep-alive\n\ndata: x\r\n"),
            ["{\"a\": 1}"]
        );
        assert_eq!(s.push(b"data: y\n\ndata: [DONE]\n\n"), ["x\ny", "[DONE]"]);
    }
}
