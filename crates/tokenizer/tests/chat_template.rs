//! Chat templates rendered as Hugging Face does. Expected strings were produced by
//! `transformers`' own Jinja environment (`_compile_jinja_template(...).render(...)`,
//! transformers 5.24, Jinja2 3.1.6) for the same templates and inputs.

use inferd_tokenizer::{ChatMessage, ChatTemplate, TokenizerError};
use serde_json::json;

const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn smollm2() -> ChatTemplate {
    ChatTemplate::new(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").expect("template compiles")
}

#[test]
fn smollm2_inserts_default_system_prompt_and_generation_prompt() {
    let messages = [ChatMessage::new("user", "Hi there")];
    assert_eq!(
        smollm2().render(&messages, None, true).expect("renders"),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_keeps_given_system_prompt_and_multi_turn_order() {
    let messages = [
        json!({"role": "system", "content": "Be terse."}),
        json!({"role": "user", "content": "2+2?"}),
        json!({"role": "assistant", "content": "4"}),
        json!({"role": "user", "content": "3+3?"}),
    ];
    assert_eq!(
        smollm2().render(&messages, None, false).expect("renders"),
        "<|im_start|>system\nBe terse.<|im_end|>\n\
         <|im_start|>user\n2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n\
         <|im_start|>user\n3+3?<|im_end|>\n"
    );
}

#[test]
fn raise_exception_message_surfaces() {
    let source = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ message['content'] }}{% endfor %}";
    let template = ChatTemplate::new(source, "<s>", "</s>").expect("template compiles");
    let ok = [
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
    ];
    assert_eq!(template.render(&ok, None, false).expect("renders"), "<s>ab");

    let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = template
        .render(&bad, None, false)
        .expect_err("roles do not alternate");
    match &err {
        TokenizerError::TemplateRaised { message } => assert_eq!(
            message,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected TemplateRaised, got {other:?}"),
    }
    assert!(err
        .to_string()
        .contains("Conversation roles must alternate"));
}

/// Qwen2.5-style tool prompt: `tools | tojson` (Python separators, no HTML escaping),
/// `loop.last`, filtered loops, `.strip()`/`.startswith()`, whitespace control, and an
/// extra context variable.
const TOOLS_TEMPLATE: &str = r#"{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0]['role'] == 'system' %}
{{- messages[0]['content'].strip() }}
{%- else %}
{{- 'You are helpful.' }}
{%- endif %}
{{- "\n\n# Tools\n\n<tools>" }}
{%- for tool in tools %}
{{- "\n" }}
{{- tool | tojson }}
{%- endfor %}
{{- "\n</tools><|im_end|>\n" }}
{%- endif %}
{%- for message in messages if message.role != 'system' %}
<|im_start|>{{ message.role }}
{% if message.content.startswith('/') %}[command] {% endif %}{{ message.content }}{% if not loop.last %}<|im_end|>
{% else %}<|im_end|>{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '\n<|im_start|>assistant\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}<think>

</think>
{% endif %}
{%- endif %}
"#;

#[test]
fn tools_render_with_python_json_and_loop_last() {
    let template = ChatTemplate::new(TOOLS_TEMPLATE, "", "<|im_end|>").expect("template compiles");
    let messages = [
        ChatMessage::new("system", "  Be brief.  "),
        ChatMessage::new("user", "What's the weather in Paris?"),
        ChatMessage::new("assistant", "Let me check."),
        ChatMessage::new("user", "/now"),
    ];
    let tools = [json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city <b>& more</b>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }})];
    let extra = json!({"enable_thinking": false});
    let extra = extra.as_object().expect("literal object");
    let rendered = template
        .render_with_context(&messages, Some(&tools), true, extra)
        .expect("renders");
    assert_eq!(
        rendered,
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n<tools>\n\
         {\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather for a city <b>& more</b>\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n\
         </tools><|im_end|>\n\
         <|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n\
         <|im_start|>assistant\nLet me check.<|im_end|>\n\
         <|im_start|>user\n[command] /now<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n"
    );

    // Without tools the system block disappears; `tools` is none but defined, as in HF.
    let plain = template
        .render(&messages[1..2], None, false)
        .expect("renders");
    assert_eq!(
        plain,
        "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>"
    );
}

#[test]
fn namespace_items_tojson_indent_break_and_python_literals() {
    let source = "{% set ns = namespace(n=0) %}{% for k, v in messages[0].items() %}{{ k }}={{ v | tojson(indent=2) }};{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{% for m in messages %}{% if m.role == 'stop' %}{% break %}{% endif %}|{{ m.role | upper }}{% endfor %}\n  {% if tools is none %}no tools{% endif %} {{ tools is defined }} {{ eos_token }}";
    let template = ChatTemplate::new(source, "<s>", "</s>").expect("template compiles");
    let messages = [
        json!({"role": "user", "content": "x", "meta": {"a": [1, 2], "b": "é"}}),
        json!({"role": "stop", "content": "y"}),
        json!({"role": "user", "content": "z"}),
    ];
    assert_eq!(
        template.render(&messages, None, false).expect("renders"),
        "role=\"user\";content=\"x\";meta={\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"é\"\n};3|USERno tools True </s>"
    );
}

#[test]
fn syntax_error_names_the_line() {
    let source = "{% for m in messages %}\n{{ m.content }\n{% endfor %}";
    let err = ChatTemplate::new(source, "", "").expect_err("unbalanced braces");
    match &err {
        TokenizerError::TemplateSyntax { line, .. } => assert_eq!(*line, Some(2)),
        other => panic!("expected TemplateSyntax, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("syntax error") && text.contains("line 2"),
        "{text}"
    );
}

#[test]
fn unclosed_block_is_a_syntax_error() {
    let err =
        ChatTemplate::new("{% if add_generation_prompt %}x", "", "").expect_err("missing endif");
    assert!(
        matches!(err, TokenizerError::TemplateSyntax { .. }),
        "{err:?}"
    );
}

#[test]
fn attribute_of_undefined_variable_is_a_render_error() {
    let template = ChatTemplate::new("a\n{{ missing.field }}", "", "").expect("compiles");
    let err = template
        .render::<ChatMessage>(&[], None, false)
        .expect_err("missing is undefined");
    match &err {
        TokenizerError::TemplateRender { line, message } => {
            assert_eq!(*line, Some(2));
            assert!(message.contains("undefined"), "{message}");
        }
        other => panic!("expected TemplateRender, got {other:?}"),
    }
}

#[test]
fn undefined_variable_renders_empty_as_in_jinja2() {
    let template =
        ChatTemplate::new("[{{ missing }}]{% if missing %}x{% endif %}", "", "").expect("compiles");
    assert_eq!(
        template
            .render::<ChatMessage>(&[], None, false)
            .expect("renders"),
        "[]"
    );
}
