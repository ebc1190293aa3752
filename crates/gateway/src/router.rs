//! Tiers and routing: a [`Gateway`] is a backend that answers by choosing among
//! other backends (local models, upstreams), grouped in tiers.
//!
//! Before any tier, the stages run in order, each optional: the intent layer
//! (`intent`: a label, perhaps a clarification answer), the rules (answer,
//! transform, or fall through), the response cache (`cache`), and the tools
//! (the intent's, or narrowed by similarity: `tools`); the context budget
//! (`context`) runs per tier tried. Each stage's time goes into the route's
//! `stages_ms`.
//!
//! For each request the policies run in order, each a small [`Policy`] with a
//! name that keeps or drops tiers:
//! - explicit: `model` naming a tier keeps that tier alone (the gateway is
//!   registered once per tier under the tier's name, and once as `auto`);
//! - capability: a tier that cannot do what the request asks (tools,
//!   constraints, logprobs, echo) is dropped;
//! - privacy: a request tagged private (`metadata.private = "true"`) or whose
//!   text matches one of the configured detectors (emails, phone numbers, card
//!   numbers, API keys, or any regex) keeps local tiers only; if none is left
//!   it is refused (400), never sent upstream;
//! - context: a tier whose window cannot hold the prompt plus `max_tokens`
//!   is dropped. Prompt tokens are estimated at one per 3 bytes of text (BPE
//!   vocabularies average about 4 bytes per token on English; the margin covers
//!   code and other languages), plus 8 per message for the chat template.
//!   With context budgets (`context`) no tier is dropped for its window:
//!   tiers estimated to hold the whole prompt are tried first, then those
//!   that hold it once cut, and each tier fits the request to its own window
//!   before its backend gets it;
//! - slo: a request with `metadata.ttft_slo_ms` drops the tiers whose backends
//!   predict a later first token (a local engine's prediction from its queue
//!   and measured step times; upstreams predict nothing and are kept), unless
//!   that would drop every tier left.
//!
//! The tiers left are tried cheapest first (price per 1M input + output
//! tokens; ties keep config order), each tier's backends in its balancer's
//! order (`balance`); with escalation configured (`escalate`), the first
//! answer may be scored and asked again of the next tier. A backend
//! that fails before its first token (unreachable, overloaded, timed out) or
//! that counts the prompt with its own tokenizer and finds it too long for its
//! window hands the request to the next, up to `max_attempts`; a request a
//! backend refuses as invalid otherwise is answered with that refusal. Nothing
//! is retried once a token has been relayed. What
//! answered, why, and every attempt before it are reported as a [`Route`]
//! event, which the server writes as the `route` object and the
//! `x-inferd-route` header.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use inferd_backend::{
    Backend, BackendError, Capabilities, Event, EventStream, Feedback, Health, LoggedToken, Request,
};
use inferd_handlers::Outcome;
use inferd_protocol::{
    ChatMessage, Confidence, Handled, IntentLabel, MessageContent, PromptInput, ProtocolError,
    Role, Route, RouteAttempt, ToolMode,
};
use regex::Regex;

use crate::balance::{Balancer, PrefixKey};
use crate::escalate::{self, Escalation};
use crate::tools::Query;

/// A group of interchangeable backends with one price.
pub struct Tier {
    pub name: String,
    pub backends: Vec<Arc<dyn Backend>>,
    /// Every backend runs in this process: private requests may use it.
    pub local: bool,
    /// USD per 1M input tokens plus per 1M output tokens (0 for local tiers):
    /// the order in which eligible tiers are tried.
    pub price: f64,
    /// The two parts of `price`, for what a handled request saved.
    pub price_in: f64,
    pub price_out: f64,
    /// A cap below the backends' own windows (keep a small tier for short
    /// prompts); `None`: the smallest of its backends' windows.
    pub context_window: Option<usize>,
    /// Orders the backends per request (`balance` module), one slot per backend.
    pub balancer: Balancer,
}

impl Tier {
    fn window(&self) -> usize {
        let own = self
            .backends
            .iter()
            .map(|b| b.context_window())
            .min()
            .unwrap_or(0);
        self.context_window.map_or(own, |cap| cap.min(own))
    }

    /// The soonest first token any of its backends predicts for a prompt of
    /// `tokens` (`None`: none predicts).
    fn ttft_estimate(&self, tokens: usize) -> Option<std::time::Duration> {
        self.backends
            .iter()
            .filter_map(|b| b.ttft_estimate(tokens))
            .min()
    }

    /// What every backend of the tier can do.
    fn capabilities(&self) -> Capabilities {
        combine(|f| self.backends.iter().all(|b| f(&b.capabilities())))
    }
}

/// Capabilities built one flag at a time by `holds` (all of a tier's backends,
/// any of a gateway's tiers). Never embeddings: the gateway routes generation.
fn combine(holds: impl Fn(fn(&Capabilities) -> bool) -> bool) -> Capabilities {
    Capabilities {
        chat: holds(|c| c.chat),
        completions: holds(|c| c.completions),
        tools: holds(|c| c.tools),
        logprobs: holds(|c| c.logprobs),
        echo: holds(|c| c.echo),
        embeddings: false,
        constraints: holds(|c| c.constraints),
    }
}

/// A named detector of text that must not leave this machine.
pub struct Detector {
    pub name: String,
    pub pattern: Regex,
}

impl Detector {
    /// A built-in detector by name (`email`, `phone`, `card`, `api_key`), or
    /// `name` itself as a regex.
    pub fn new(name: &str) -> Result<Detector, String> {
        let pattern = match name {
            "email" => r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
            "phone" => r"\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}",
            // 13 to 19 digits in groups, as card numbers are written.
            "card" => r"\b(?:\d[ -]?){12,18}\d\b",
            "api_key" => r"\b(?:sk|pk|rk|ghp|xox[bap])[-_][A-Za-z0-9_-]{16,}\b",
            other => other,
        };
        let pattern = Regex::new(pattern)
            .map_err(|e| format!("private pattern {name:?} is not a regex: {e}"))?;
        Ok(Detector {
            name: name.to_owned(),
            pattern,
        })
    }
}

/// How the gateway routes, shared by its per-tier registrations.
pub struct Routing {
    pub tiers: Vec<Tier>,
    pub detectors: Vec<Detector>,
    /// Backends tried for one request at most (first try included).
    pub max_attempts: usize,
    /// Re-ask the next tier when the first answer's confidence is low.
    pub escalation: Option<Escalation>,
    /// Deterministic handlers, tried before routing (chat requests).
    pub rules: inferd_handlers::Rules,
    /// The response cache, when configured.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Embeds last user messages for the semantic cache.
    pub embedder: Option<Arc<dyn Backend>>,
    /// Narrows long tool lists to the most relevant tools.
    pub tools: Option<Arc<crate::tools::ToolNarrowing>>,
    /// Classifies requests into the configured intents.
    pub intents: Option<Arc<crate::intent::Intents>>,
    /// Fits chat requests into the answering tier's window.
    pub context: Option<Arc<crate::context::Budgets>>,
}

/// One policy's verdict on one tier.
enum Verdict {
    Keep,
    /// Dropped, with the reason named in a refusal when no tier is left.
    Drop(String),
}

/// A routing rule with a name (reported as the route's `reason` when it is what
/// decided).
trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    fn judge(&self, tier: &Tier, ask: &Ask) -> Verdict;
}

/// What the policies look at, worked out once per request.
struct Ask {
    capabilities: Capabilities,
    /// Estimated prompt tokens plus `max_tokens`.
    tokens: usize,
    /// Estimated prompt tokens.
    prompt_tokens: usize,
    /// With context budgets: the estimated tokens of what is never cut (the
    /// system prompt, the current turn) plus the answer's reserve. Tiers are
    /// ordered by it, never dropped: the tier's own count decides.
    essential: Option<usize>,
    /// `metadata.ttft_slo_ms`: the first token wanted within this.
    ttft_target: Option<std::time::Duration>,
    /// Why the request must stay local (`None`: it may leave).
    private: Option<String>,
}

struct Capability;
struct Privacy;
struct Context;

impl Policy for Capability {
    fn name(&self) -> &'static str {
        "capability"
    }
    fn judge(&self, tier: &Tier, ask: &Ask) -> Verdict {
        let (have, want) = (tier.capabilities(), ask.capabilities);
        let missing: Vec<&str> = [
            (want.chat && !have.chat, "chat"),
            (want.completions && !have.completions, "completions"),
            (want.tools && !have.tools, "tools"),
            (want.logprobs && !have.logprobs, "logprobs"),
            (want.echo && !have.echo, "echo"),
            (want.constraints && !have.constraints, "constrained output"),
        ]
        .into_iter()
        .filter_map(|(m, name)| m.then_some(name))
        .collect();
        if missing.is_empty() {
            Verdict::Keep
        } else {
            Verdict::Drop(format!(
                "tier `{}` has no {}",
                tier.name,
                missing.join(", ")
            ))
        }
    }
}

impl Policy for Privacy {
    fn name(&self) -> &'static str {
        "privacy"
    }
    fn judge(&self, tier: &Tier, ask: &Ask) -> Verdict {
        match &ask.private {
            Some(why) if !tier.local => Verdict::Drop(format!(
                "tier `{}` is not local and the request is private ({why})",
                tier.name
            )),
            _ => Verdict::Keep,
        }
    }
}

impl Policy for Context {
    fn name(&self) -> &'static str {
        "context"
    }
    fn judge(&self, tier: &Tier, ask: &Ask) -> Verdict {
        let window = tier.window();
        // With context budgets the tier's own count decides (it cuts, or
        // refuses with the numbers).
        if ask.essential.is_some() || ask.tokens <= window {
            Verdict::Keep
        } else {
            Verdict::Drop(format!(
                "tier `{}` holds {window} tokens and the request needs about {}",
                tier.name, ask.tokens
            ))
        }
    }
}

/// A request with a TTFT target keeps the tiers whose backends predict they
/// can meet it (an engine's prediction from its queue and step times); tiers
/// that predict nothing (upstreams) are kept. Applied after the others, and
/// only if some tier is left: a target no tier can meet is served as well as
/// it can be, not refused.
struct Slo;

impl Policy for Slo {
    fn name(&self) -> &'static str {
        "slo"
    }
    fn judge(&self, tier: &Tier, ask: &Ask) -> Verdict {
        let Some(target) = ask.ttft_target else {
            return Verdict::Keep;
        };
        match tier.ttft_estimate(ask.prompt_tokens) {
            Some(eta) if eta > target => Verdict::Drop(format!(
                "tier `{}` predicts a first token in {:.0} ms, past the {:.0} ms target",
                tier.name,
                eta.as_secs_f64() * 1e3,
                target.as_secs_f64() * 1e3
            )),
            _ => Verdict::Keep,
        }
    }
}

const POLICIES: [&dyn Policy; 3] = [&Capability, &Privacy, &Context];

/// The gateway as a backend: `auto` routes over every tier; a tier's name
/// routes within that tier.
#[derive(Clone)]
pub struct Gateway {
    name: String,
    routing: Arc<Routing>,
    /// `Some(i)`: registered as tier `i`'s name (explicit routing).
    only: Option<usize>,
}

impl Gateway {
    /// `auto` and one gateway per tier, sharing `routing`.
    pub fn all(auto: &str, routing: Routing) -> Vec<Gateway> {
        let routing = Arc::new(routing);
        let mut all = vec![Gateway {
            name: auto.to_owned(),
            routing: Arc::clone(&routing),
            only: None,
        }];
        for (i, t) in routing.tiers.iter().enumerate() {
            all.push(Gateway {
                name: t.name.clone(),
                routing: Arc::clone(&routing),
                only: Some(i),
            });
        }
        all
    }

    fn tiers(&self) -> impl Iterator<Item = (usize, &Tier)> {
        self.routing
            .tiers
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.only.is_none_or(|o| o == *i))
    }

    /// The tiers to try in order, each with the policies that dropped a tier
    /// at least as cheap (what, besides price, sent the request there); or the
    /// refusal naming why no tier is left.
    fn plan(&self, ask: &Ask) -> Result<Vec<(usize, Vec<&'static str>)>, BackendError> {
        let mut kept: Vec<usize> = Vec::new();
        let mut dropped: Vec<(usize, &'static str, String)> = Vec::new();
        for (i, tier) in self.tiers() {
            let verdict = POLICIES.iter().find_map(|p| match p.judge(tier, ask) {
                Verdict::Keep => None,
                Verdict::Drop(why) => Some((p.name(), why)),
            });
            match verdict {
                None => kept.push(i),
                Some((policy, why)) => dropped.push((i, policy, why)),
            }
        }
        let (meet, miss): (Vec<usize>, Vec<usize>) = kept
            .iter()
            .partition(|&&i| matches!(Slo.judge(&self.routing.tiers[i], ask), Verdict::Keep));
        if !meet.is_empty() && !miss.is_empty() {
            dropped.extend(miss.into_iter().map(|i| (i, Slo.name(), String::new())));
            kept = meet;
        }
        if kept.is_empty() {
            let whys: Vec<String> = dropped.into_iter().map(|d| d.2).collect();
            return Err(BackendError::Invalid(ProtocolError::field(
                "model",
                format!("no tier can serve this request: {}", whys.join("; ")),
            )));
        }
        let tiers = &self.routing.tiers;
        kept.sort_by(|&a, &b| tiers[a].price.total_cmp(&tiers[b].price));
        // With context budgets, the tiers estimated to hold the whole prompt
        // come first, then those that hold it once cut, then the rest (by
        // price within each).
        if let Some(essential) = ask.essential {
            kept.sort_by_key(|&i| {
                let w = tiers[i].window();
                (ask.tokens > w, essential > w)
            });
        }
        Ok(kept
            .into_iter()
            .map(|k| {
                let mut why: Vec<&'static str> = Vec::new();
                for (_, policy, _) in dropped
                    .iter()
                    .filter(|d| tiers[d.0].price <= tiers[k].price)
                {
                    if !why.contains(policy) {
                        why.push(policy);
                    }
                }
                (k, why)
            })
            .collect())
    }

    /// The route's `reason`: `explicit` when the request named the tier; else
    /// the policies that dropped cheaper tiers, and `fallback` when tiers
    /// before it failed, joined with `+`; `cost` when price alone decided.
    fn reason(&self, policies: &[&'static str], fell_back: bool) -> String {
        if self.only.is_some() {
            return if fell_back {
                "explicit+fallback"
            } else {
                "explicit"
            }
            .to_owned();
        }
        let mut parts: Vec<&str> = policies.to_vec();
        if fell_back {
            parts.push("fallback");
        }
        if parts.is_empty() {
            "cost".to_owned()
        } else {
            parts.join("+")
        }
    }
}

impl Backend for Gateway {
    fn name(&self) -> &str {
        &self.name
    }

    fn context_window(&self) -> usize {
        self.tiers().map(|(_, t)| t.window()).max().unwrap_or(0)
    }

    /// Anything one of its tiers can do: the policies drop tiers that cannot.
    fn capabilities(&self) -> Capabilities {
        combine(|f| self.tiers().any(|(_, t)| f(&t.capabilities())))
    }

    fn health(&self) -> Health {
        let ready = self
            .tiers()
            .flat_map(|(_, t)| &t.backends)
            .any(|b| b.health() == Health::Ready);
        if ready {
            Health::Ready
        } else {
            Health::Unavailable(format!("no backend of `{}` is ready", self.name))
        }
    }

    fn generate(&self, request: Request) -> BoxFuture<'static, Result<EventStream, BackendError>> {
        let gateway = self.clone();
        Box::pin(async move { gateway.respond(request).await })
    }

    fn feedback(
        &self,
        query: String,
        label: Feedback,
    ) -> Option<BoxFuture<'static, Result<(usize, bool), BackendError>>> {
        // Taken once, by the router that routes over every tier.
        if self.only.is_some() {
            return None;
        }
        match label {
            Feedback::Tool(tool) => {
                let narrowing = self.routing.tools.clone()?;
                Some(Box::pin(async move {
                    narrowing
                        .feedback(query, tool)
                        .await
                        .map_err(BackendError::Internal)
                }))
            }
            Feedback::Intent(intent) => {
                let intents = self.routing.intents.clone()?;
                Some(Box::pin(
                    async move { intents.feedback(query, intent).await },
                ))
            }
        }
    }

    fn cache_stats(&self) -> Option<inferd_backend::CacheStats> {
        // Reported once, by the router that routes over every tier.
        self.routing
            .cache
            .as_ref()
            .filter(|_| self.only.is_none())
            .map(|c| c.stats())
    }
}

impl Gateway {
    /// The stages before the model (intent, rules, cache, tools), then the
    /// tiers (module docs).
    async fn respond(self, request: Request) -> Result<EventStream, BackendError> {
        let routing = Arc::clone(&self.routing);
        let mut stages = Stages::default();
        let mut query = Query::of(&request);
        let arrival = request.common().arrival;

        // The intent, when intents are declared.
        let label = match &routing.intents {
            Some(intents) if query.text().is_some_and(|t| !t.trim().is_empty()) => {
                let t = Instant::now();
                let label = intents.label(&mut query).await;
                stages.time("intent", t);
                label.map(|l| (l, intents))
            }
            _ => None,
        };
        if let Some((l, intents)) = &label {
            let clarify = intents.clarification.as_ref().filter(|_| !l.sure);
            stages.intent = Some(IntentLabel {
                name: l.name.clone(),
                score: f64::from(l.score),
                threshold: f64::from(intents.threshold),
                action: match (l.sure, clarify.is_some()) {
                    (true, _) => "labelled",
                    (false, true) => "clarified",
                    (false, false) => "unsure",
                }
                .to_owned(),
            });
            if let Some(text) = clarify {
                let route = Route {
                    tier: "intent".into(),
                    backend: "clarification".into(),
                    reason: "intent".into(),
                    ..Default::default()
                };
                return Ok(answered(&request, stages.into_route(route), text.clone()));
            }
        }
        let sure = label.as_ref().filter(|(l, _)| l.sure);

        // The rules.
        // A request the policies cannot read (a bad `metadata.ttft_slo_ms`) is
        // refused before any stage answers it.
        let asked = ask(&request, &routing.detectors, routing.context.as_deref())?;
        let plan = self.plan(&asked);
        let t = Instant::now();
        let handling = self.handle(
            request,
            &asked,
            &plan,
            query.text(),
            sure.map(|(l, _)| l.name.as_str()),
            &mut stages,
        );
        if !routing.rules.is_empty() {
            stages.time("rules", t);
        }
        let (mut request, forced) = match handling {
            Handling::Answered(events) => return Ok(events),
            Handling::Route { request, tier } => (request, tier),
        };
        // The response cache.
        let mut store = None;
        if let Some(cache) = &routing.cache {
            let t = Instant::now();
            let exact = crate::cache::ResponseCache::key(&self.name, &request);
            if let Some((route, events)) = exact.and_then(|k| cache.get(k)) {
                return Ok(crate::cache::replay(route, &events, arrival, None));
            }
            let context = match &routing.embedder {
                Some(e) if cache.is_semantic() => {
                    crate::cache::ResponseCache::context(&self.name, &request).map(|c| (c.0, e))
                }
                _ => None,
            };
            let semantic = match context {
                Some((context, e)) => query
                    .vector(e)
                    .await
                    .map(|vector| crate::cache::Semantic { context, vector }),
                None => None,
            };
            if let Some((route, events, cos)) = semantic.as_ref().and_then(|s| cache.nearest(s)) {
                return Ok(crate::cache::replay(route, &events, arrival, Some(cos)));
            }
            stages.time("cache", t);
            if exact.is_some() || semantic.is_some() {
                store = Some((
                    Arc::clone(cache),
                    exact.unwrap_or_else(rand::random),
                    semantic,
                ));
            }
        }

        // The tools: the intent's, or the most relevant by similarity (none
        // narrowed when the intent is unsure).
        let t = Instant::now();
        let intent_tools = sure
            .map(|(l, intents)| &intents.spec(l.index).tools)
            .filter(|t| !t.is_empty());
        stages.tools = match (intent_tools, &routing.tools) {
            (Some(names), _) => crate::tools::keep_named(&mut request, names),
            (None, Some(n)) if label.is_none() || sure.is_some() => {
                n.narrow(&mut request, &mut query).await
            }
            _ => None,
        };
        if intent_tools.is_some() || routing.tools.is_some() {
            stages.time("tools", t);
        }

        // Planned again when a stage changed the request (a rule's hint, fewer
        // tools): the policies judge what the tiers will get.
        let plan = if stages.tools.is_some()
            || stages
                .handled
                .as_ref()
                .is_some_and(|h| h.action == "transformed")
        {
            ask(&request, &routing.detectors, routing.context.as_deref())
                .and_then(|a| self.plan(&a))
        } else {
            plan
        };
        // A rule's tier, else the intent's, when routing chose and policies
        // left it eligible.
        let forced = forced
            .or_else(|| {
                let (l, intents) = sure?;
                let name = intents.spec(l.index).tier.as_ref()?;
                routing.tiers.iter().position(|t| &t.name == name)
            })
            .filter(|t| {
                self.only.is_none() && plan.as_ref().is_ok_and(|p| p.iter().any(|(i, _)| i == t))
            });
        let plan: Vec<Step> = plan?
            .into_iter()
            .filter(|(i, _)| forced.is_none_or(|t| *i == t))
            .map(|(tier, why)| Step {
                tier,
                first_try: self.reason(&why, false),
                after_failures: self.reason(&why, true),
            })
            .collect();

        let choices = request.choices();
        let events = self.answer(request, plan, stages).await?;
        Ok(match store {
            Some((cache, key, semantic)) => {
                crate::cache::storing(cache, key, semantic, events, choices)
            }
            None => events,
        })
    }

    /// The tiers of `plan` in order, with escalation when configured.
    async fn answer(
        &self,
        request: Request,
        plan: Vec<Step>,
        stages: Stages,
    ) -> Result<EventStream, BackendError> {
        let routing = &*self.routing;
        // Escalation re-asks a later tier: only when routing chose the tier,
        // for one choice, and (streamed) with tokens to hold.
        let escalation = routing.escalation.filter(|e| {
            self.only.is_none()
                && request.choices() == 1
                && (!request.common().stream || e.hold_tokens > 0)
        });
        let keyed = plan
            .iter()
            .any(|p| routing.tiers[p.tier].balancer.wants_prefix());
        let prefix = if keyed {
            prefix_key(&request)
        } else {
            PrefixKey::default()
        };
        let mut tries = Tries {
            routing,
            prefix: &prefix,
            attempts: Vec::new(),
            arrival: request.common().arrival,
            elsewhere: std::time::Duration::ZERO,
            dispatched: Instant::now(),
            too_long: None,
        };
        let scored_first = escalation
            .filter(|_| plan.len() > 1 && routing.tiers[plan[0].tier].capabilities().logprobs);
        let Some(esc) = scored_first else {
            return tries.run(&plan, &request).await.map(|r| routed(r, &stages));
        };
        let scored = escalate::with_logprobs(&request, esc.top_logprobs);
        let (route, events) = match tries.run(&plan[..1], &scored).await {
            Ok(first) => first,
            Err(e @ BackendError::Invalid(_)) => return Err(e),
            Err(_) => {
                return tries
                    .run(&plan[1..], &request)
                    .await
                    .map(|r| routed(r, &stages))
            }
        };
        let held = Held::read(events, request.common().stream.then_some(esc.hold_tokens)).await;
        // The scored answer's time is the first tier's, not the gateway's.
        tries.elsewhere += tries.dispatched.elapsed();
        if let Some(e) = held.failed {
            // Nothing was relayed: the next tiers may still answer.
            tries.failed(&route.tier, &route.backend, &e);
            return tries
                .run(&plan[1..], &request)
                .await
                .map(|r| routed(r, &stages));
        }
        let client_top = request.logprobs();
        let Some(scores) = escalate::Scores::of(&held.tokens) else {
            return Ok(routed((route, held.replay(client_top)), &stages));
        };
        let score = esc.signal.of(&scores);
        let mut confidence = Confidence {
            tier: route.tier.clone(),
            backend: route.backend.clone(),
            tokens: scores.tokens,
            mean_logprob: scores.mean_logprob,
            min_logprob: scores.min_logprob,
            mean_entropy: scores.mean_entropy,
            signal: esc.signal.name().to_owned(),
            score,
            threshold: esc.threshold,
            escalated: false,
        };
        if score < esc.threshold {
            let before = tries.attempts.len();
            // If the next tiers fail, the first answer stands, with those
            // attempts named in its route.
            if let Ok((mut upper, events)) = tries.run(&plan[1..], &request).await {
                upper.reason = if upper.attempts.len() > before {
                    "escalation+fallback".into()
                } else {
                    "escalation".into()
                };
                confidence.escalated = true;
                upper.confidence = Some(confidence);
                return Ok(routed((upper, events), &stages));
            }
        }
        let mut route = route;
        route.attempts = std::mem::take(&mut tries.attempts);
        route.confidence = Some(confidence);
        Ok(routed((route, held.replay(client_top)), &stages))
    }
}

/// One tier of a request's plan, with its route reasons.
struct Step {
    tier: usize,
    first_try: String,
    after_failures: String,
}

/// The backends tried for one request so far.
struct Tries<'a> {
    routing: &'a Routing,
    prefix: &'a PrefixKey,
    attempts: Vec<RouteAttempt>,
    arrival: std::time::Instant,
    /// Time spent on backends that did not answer (failed, or scored and
    /// escalated from).
    elsewhere: std::time::Duration,
    /// When the last backend was handed the request.
    dispatched: std::time::Instant,
    /// The last refusal for a prompt too long for a tier: what the client is
    /// told when every tier refused so.
    too_long: Option<BackendError>,
}

impl Tries<'_> {
    fn failed(&mut self, tier: &str, backend: &str, error: &BackendError) {
        let error = match error {
            BackendError::TooLong(p) => {
                self.too_long = Some(BackendError::TooLong(p.clone()));
                p.message.clone()
            }
            e => {
                self.too_long = None;
                e.to_string()
            }
        };
        self.attempts.push(RouteAttempt {
            tier: tier.to_owned(),
            backend: backend.to_owned(),
            error,
        });
    }

    /// The first backend of `plan` that starts the answer (each tier's
    /// backends in its balancer's order), while attempts are left.
    async fn run(
        &mut self,
        plan: &[Step],
        request: &Request,
    ) -> Result<(Route, EventStream), BackendError> {
        for step in plan {
            let tier = &self.routing.tiers[step.tier];
            let order = tier.balancer.order(self.prefix);
            for (nth, &replica) in order.replicas.iter().enumerate() {
                if self.attempts.len() >= self.routing.max_attempts {
                    break;
                }
                let backend = &tier.backends[replica];
                // The context budget, fitted to this tier's window.
                let (request, context, context_ms) = match (&self.routing.context, request) {
                    (Some(budgets), Request::Chat(r)) => {
                        let t = Instant::now();
                        let fitted = crate::context::apply(
                            Arc::clone(budgets),
                            r.clone(),
                            tier.name.clone(),
                            tier.window(),
                            Arc::clone(backend),
                        )
                        .await;
                        match fitted {
                            Ok((r, report)) => (
                                Request::Chat(r),
                                Some(report),
                                Some(t.elapsed().as_secs_f64() * 1e3),
                            ),
                            Err(e) => {
                                self.failed(&tier.name, backend.name(), &e);
                                break;
                            }
                        }
                    }
                    _ => (request.clone(), None, None),
                };
                let in_flight = tier.balancer.start(replica);
                self.dispatched = std::time::Instant::now();
                let own = self
                    .dispatched
                    .saturating_duration_since(self.arrival)
                    .saturating_sub(self.elsewhere);
                let started = backend.generate(request).await;
                if started.is_err() {
                    self.elsewhere += self.dispatched.elapsed();
                }
                match started {
                    Ok(events) => {
                        let route = Route {
                            tier: tier.name.clone(),
                            backend: backend.name().to_owned(),
                            reason: if self.attempts.is_empty() {
                                step.first_try.clone()
                            } else {
                                step.after_failures.clone()
                            },
                            attempts: self.attempts.clone(),
                            balance: (tier.backends.len() > 1)
                                .then(|| tier.balancer.policy().name().to_owned()),
                            prefix_match: order
                                .prefix_match
                                .filter(|_| nth == 0 && tier.backends.len() > 1),
                            overhead_ms: Some(own.as_secs_f64() * 1e3),
                            context,
                            stages_ms: context_ms
                                .map(|ms| ("context".to_owned(), ms))
                                .into_iter()
                                .collect(),
                            ..Default::default()
                        };
                        // In flight on the replica until its events are dropped.
                        let events = events
                            .map(move |ev| {
                                let _ = &in_flight;
                                ev
                            })
                            .boxed();
                        return Ok((route, events));
                    }
                    // The request itself is wrong: every tier would say so.
                    // (A backend that counted the prompt with its own tokenizer
                    // and found it too long is not: a larger tier may take it.)
                    Err(e @ BackendError::Invalid(_)) => return Err(e),
                    Err(e) => self.failed(&tier.name, backend.name(), &e),
                }
            }
        }
        if let Some(e) = self.too_long.take() {
            // Every tier tried found the prompt too long: the client's to fix.
            return Err(e);
        }
        let tried: Vec<String> = self
            .attempts
            .iter()
            .map(|a| format!("{} ({}): {}", a.tier, a.backend, a.error))
            .collect();
        Err(BackendError::Unavailable(format!(
            "every eligible tier failed: {}",
            tried.join("; ")
        )))
    }
}

/// What the stages before routing did to a request, for its route.
#[derive(Clone, Default)]
struct Stages {
    handled: Option<Handled>,
    tools: Option<inferd_protocol::ToolsNarrowed>,
    intent: Option<IntentLabel>,
    ms: std::collections::BTreeMap<String, f64>,
}

impl Stages {
    fn time(&mut self, stage: &str, since: Instant) {
        *self.ms.entry(stage.to_owned()).or_default() += since.elapsed().as_secs_f64() * 1e3;
    }

    /// `route` with what the stages did.
    fn into_route(self, mut route: Route) -> Route {
        route.handler = self.handled;
        route.tools = self.tools;
        route.intent = self.intent;
        route.stages_ms.extend(self.ms);
        route
    }
}

/// The route event (with what the stages did), then the answer.
fn routed((route, events): (Route, EventStream), stages: &Stages) -> EventStream {
    let route = stages.clone().into_route(route);
    futures_util::stream::once(async move { Event::Route(Box::new(route)) })
        .chain(events)
        .boxed()
}

/// What the rules made of a request (made and taken apart once per request,
/// so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Handling {
    /// A rule answered: the whole answer's events.
    Answered(EventStream),
    /// Route it (perhaps changed), perhaps to one tier.
    Route {
        request: Request,
        tier: Option<usize>,
    },
}

impl Gateway {
    /// Runs the rules on a chat request's last user message (and its intent,
    /// when labelled); what a rule did goes into `stages`.
    fn handle(
        &self,
        request: Request,
        asked: &Ask,
        plan: &Result<Vec<(usize, Vec<&'static str>)>, BackendError>,
        last_user: Option<&str>,
        intent: Option<&str>,
        stages: &mut Stages,
    ) -> Handling {
        let rules = &self.routing.rules;
        let Some(text) = last_user.filter(|_| !rules.is_empty()) else {
            return Handling::Route {
                request,
                tier: None,
            };
        };
        let report = |rule: &str, action: &str, error: Option<String>| Handled {
            rule: rule.to_owned(),
            action: action.to_owned(),
            error,
            saved_tokens: None,
            saved_usd: None,
        };
        match rules.apply(text, intent) {
            Outcome::Pass => Handling::Route {
                request,
                tier: None,
            },
            Outcome::Failed { rule, error } => {
                tracing::info!(rule, %error, "rule failed; the model answers");
                stages.handled = Some(report(rule, "failed", Some(error)));
                Handling::Route {
                    request,
                    tier: None,
                }
            }
            Outcome::Transform {
                rule,
                system_hint,
                tier,
            } => {
                let mut request = request;
                if let (Request::Chat(c), Some(hint)) = (&mut request, system_hint) {
                    add_system_hint(&mut c.messages, hint);
                }
                let tier = tier.and_then(|t| self.routing.tiers.iter().position(|x| x.name == t));
                stages.handled = Some(report(rule, "transformed", None));
                Handling::Route { request, tier }
            }
            Outcome::Answer { rule, text } => {
                let mut handled = report(rule, "answered", None);
                // What the tier that would have answered would have cost.
                let answer = estimate(text.len());
                handled.saved_tokens = Some(asked.prompt_tokens + answer);
                if let Ok(p) = plan {
                    if let Some((t, _)) = p.first() {
                        let t = &self.routing.tiers[*t];
                        handled.saved_usd = Some(
                            (asked.prompt_tokens as f64 * t.price_in + answer as f64 * t.price_out)
                                / 1e6,
                        );
                    }
                }
                let route = Route {
                    tier: "rules".into(),
                    backend: handled.rule.clone(),
                    reason: "handler".into(),
                    ..Default::default()
                };
                stages.handled = Some(handled);
                let route = std::mem::take(stages).into_route(route);
                Handling::Answered(answered(&request, route, text))
            }
        }
    }
}

/// Appends `hint` to the system message, or starts the conversation with one.
fn add_system_hint(messages: &mut Vec<ChatMessage>, hint: &str) {
    match messages.first_mut() {
        Some(m) if matches!(m.role, Role::System | Role::Developer) => {
            let text = m.text();
            m.content = Some(MessageContent::Text(if text.is_empty() {
                hint.to_owned()
            } else {
                format!("{text}\n\n{hint}")
            }));
        }
        _ => messages.insert(0, ChatMessage::new(Role::System, hint)),
    }
}

/// An answer made without a model (a rule's, a clarification) as a whole
/// response: the route, then for each choice the text and its end. No
/// tokens are counted.
fn answered(request: &Request, route: Route, text: String) -> EventStream {
    let ms = request.common().arrival.elapsed().as_secs_f64() * 1e3;
    let timings = inferd_protocol::Timings {
        ttft_ms: ms,
        e2e_ms: ms,
        ..Default::default()
    };
    let mut events = vec![Event::Route(Box::new(route))];
    for index in 0..request.choices().max(1) {
        events.push(Event::Delta {
            index,
            text: text.clone(),
            tokens: Vec::new(),
        });
        events.push(Event::Done {
            index,
            finish: inferd_protocol::FinishReason::Stop,
            usage: inferd_protocol::Usage::default(),
            timings,
        });
    }
    futures_util::stream::iter(events).boxed()
}

/// The start of an answer read and held back for scoring.
struct Held {
    events: Vec<Event>,
    /// Choice 0's logged tokens among them.
    tokens: Vec<LoggedToken>,
    /// It failed before anything was relayed.
    failed: Option<BackendError>,
    rest: EventStream,
}

impl Held {
    /// Reads to the end of the answer, or with `Some(n)` to its `n`th token.
    async fn read(mut events: EventStream, hold: Option<usize>) -> Held {
        let mut held = Vec::new();
        let mut tokens = Vec::new();
        let mut deltas = 0;
        let mut failed = None;
        loop {
            let Some(ev) = events.next().await else {
                failed = Some(BackendError::Unavailable(
                    "the answer ended before it finished".into(),
                ));
                break;
            };
            match &ev {
                Event::Delta {
                    index: 0,
                    tokens: t,
                    ..
                } => {
                    tokens.extend(t.iter().cloned());
                    deltas += 1;
                }
                Event::Error(e) => {
                    failed = Some(e.clone());
                    break;
                }
                _ => {}
            }
            let done = matches!(ev, Event::Done { .. });
            held.push(ev);
            if done || hold.is_some_and(|n| tokens.len().max(deltas) >= n) {
                break;
            }
        }
        Held {
            events: held,
            tokens,
            failed,
            rest: events,
        }
    }

    /// The held events, then the rest, with no more alternatives per token
    /// than the client asked for.
    fn replay(self, client_top: Option<usize>) -> EventStream {
        let trim = move |mut ev: Event| {
            if let (Event::Delta { tokens, .. }, Some(k)) = (&mut ev, client_top) {
                for t in tokens {
                    t.top.truncate(k);
                }
            }
            ev
        };
        futures_util::stream::iter(self.events)
            .chain(self.rest)
            .map(trim)
            .boxed()
    }
}

/// The prompt as the cache-aware balancer keys it: tools, then each message's
/// role and text; or the first completion prompt.
fn prefix_key(request: &Request) -> PrefixKey {
    match request {
        Request::Chat(r) => {
            let tools: Vec<String> = r
                .tools
                .iter()
                .map(|t| serde_json::to_string(&t.function).unwrap_or_default())
                .collect();
            let texts: Vec<String> = r.messages.iter().map(|m| m.text()).collect();
            let parts =
                tools
                    .iter()
                    .map(|t| t.as_bytes())
                    .chain(r.messages.iter().zip(&texts).flat_map(|(m, t)| {
                        [m.role.as_str().as_bytes(), b"\x1f", t.as_bytes(), b"\x1e"]
                    }));
            PrefixKey::of(parts)
        }
        Request::Completion(r) => match r.prompts.first() {
            Some(PromptInput::Text(t)) => PrefixKey::of([t.as_bytes()]),
            Some(PromptInput::Tokens(ids)) => {
                let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
                PrefixKey::of([bytes.as_slice()])
            }
            None => PrefixKey::default(),
        },
    }
}

use crate::context::estimate;

/// Works out what the policies need from a request.
fn ask(
    request: &Request,
    detectors: &[Detector],
    budgets: Option<&crate::context::Budgets>,
) -> Result<Ask, BackendError> {
    // The text the detectors read, and the longest prompt's estimated tokens.
    let (texts, prompt_tokens): (Vec<String>, usize) = match request {
        Request::Chat(r) => {
            let mut texts: Vec<String> = r.messages.iter().map(|m| m.text()).collect();
            texts.extend(
                r.tools
                    .iter()
                    .map(|t| serde_json::to_string(&t.function).unwrap_or_default()),
            );
            let bytes: usize = texts.iter().map(String::len).sum();
            (texts, estimate(bytes) + 8 * r.messages.len())
        }
        Request::Completion(r) => {
            let longest = r
                .prompts
                .iter()
                .map(|p| match p {
                    PromptInput::Text(t) => estimate(t.len()),
                    PromptInput::Tokens(ids) => ids.len(),
                })
                .max()
                .unwrap_or(0);
            let texts = r
                .prompts
                .iter()
                .filter_map(|p| match p {
                    PromptInput::Text(t) => Some(t.clone()),
                    PromptInput::Tokens(_) => None,
                })
                .collect();
            (texts, longest)
        }
    };
    let common = request.common();
    let private = if common.is_private() {
        Some("tagged private in metadata".to_owned())
    } else {
        detectors
            .iter()
            .find(|d| texts.iter().any(|t| d.pattern.is_match(t)))
            .map(|d| format!("it matches the `{}` detector", d.name))
    };
    let forced_tools = matches!(
        request,
        Request::Chat(r) if matches!(r.tool_choice, ToolMode::Required | ToolMode::Named(_))
    );
    let capabilities = Capabilities {
        chat: matches!(request, Request::Chat(_)),
        completions: matches!(request, Request::Completion(_)),
        tools: matches!(request, Request::Chat(r) if !r.tools.is_empty()),
        logprobs: request.logprobs().is_some(),
        echo: matches!(request, Request::Completion(r) if r.echo),
        embeddings: false,
        constraints: request.constraint().is_some() || forced_tools,
    };
    let ttft_target = match common.metadata.get("ttft_slo_ms") {
        None => None,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(ms) if ms.is_finite() && ms > 0.0 => {
                Some(std::time::Duration::from_secs_f64(ms / 1e3))
            }
            _ => {
                return Err(BackendError::Invalid(ProtocolError::field(
                    "metadata.ttft_slo_ms",
                    format!("must be a positive number of milliseconds, got {v:?}"),
                )))
            }
        },
    };
    let essential = match (budgets, request) {
        (Some(b), Request::Chat(r)) => {
            Some(crate::context::essential(r) + common.max_tokens.unwrap_or(b.output_reserve))
        }
        _ => None,
    };
    Ok(Ask {
        capabilities,
        tokens: prompt_tokens + common.max_tokens.unwrap_or(0),
        prompt_tokens,
        essential,
        ttft_target,
        private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_detectors_find_what_they_name_and_little_else() {
        let cases = [
            ("email", "write to ann.lee+x@mail.example.org today", true),
            ("email", "the @ sign and example.org", false),
            ("card", "card 4111 1111 1111 1111 exp 12/29", true),
            ("card", "order 12345 shipped", false),
            ("phone", "call +1 415 555 0100", true),
            ("phone", "in 2024 we had 3 cats", false),
            ("api_key", "key sk-abcdefghijklmnop1234", true),
            ("api_key", "a sketchy skate", false),
        ];
        for (name, text, hit) in cases {
            let d = Detector::new(name).expect("built in");
            assert_eq!(d.pattern.is_match(text), hit, "{name}: {text:?}");
        }
        assert!(Detector::new("secret-[0-9]+")
            .unwrap()
            .pattern
            .is_match("secret-42"));
        let err = Detector::new("(").err().expect("not a regex");
        assert!(err.contains("not a regex"), "{err}");
    }
}
