//! The rules shipped with keyward, one TOML file per provider, embedded.

/// `(file name, contents)` of every builtin rules file.
pub const FILES: &[(&str, &str)] = &[
    ("1password.toml", include_str!("../../rules/1password.toml")),
    ("airtable.toml", include_str!("../../rules/airtable.toml")),
    ("algolia.toml", include_str!("../../rules/algolia.toml")),
    ("alibaba.toml", include_str!("../../rules/alibaba.toml")),
    ("anthropic.toml", include_str!("../../rules/anthropic.toml")),
    (
        "assemblyai.toml",
        include_str!("../../rules/assemblyai.toml"),
    ),
    ("atlassian.toml", include_str!("../../rules/atlassian.toml")),
    ("aws.toml", include_str!("../../rules/aws.toml")),
    ("azure.toml", include_str!("../../rules/azure.toml")),
    ("braintree.toml", include_str!("../../rules/braintree.toml")),
    ("brevo.toml", include_str!("../../rules/brevo.toml")),
    ("buildkite.toml", include_str!("../../rules/buildkite.toml")),
    ("circleci.toml", include_str!("../../rules/circleci.toml")),
    ("clojars.toml", include_str!("../../rules/clojars.toml")),
    (
        "cloudflare.toml",
        include_str!("../../rules/cloudflare.toml"),
    ),
    ("cohere.toml", include_str!("../../rules/cohere.toml")),
    (
        "contentful.toml",
        include_str!("../../rules/contentful.toml"),
    ),
    ("database.toml", include_str!("../../rules/database.toml")),
    (
        "databricks.toml",
        include_str!("../../rules/databricks.toml"),
    ),
    ("datadog.toml", include_str!("../../rules/datadog.toml")),
    ("deepseek.toml", include_str!("../../rules/deepseek.toml")),
    (
        "digitalocean.toml",
        include_str!("../../rules/digitalocean.toml"),
    ),
    ("discord.toml", include_str!("../../rules/discord.toml")),
    ("docker.toml", include_str!("../../rules/docker.toml")),
    ("dockerhub.toml", include_str!("../../rules/dockerhub.toml")),
    ("doppler.toml", include_str!("../../rules/doppler.toml")),
    ("dropbox.toml", include_str!("../../rules/dropbox.toml")),
    ("dynatrace.toml", include_str!("../../rules/dynatrace.toml")),
    ("easypost.toml", include_str!("../../rules/easypost.toml")),
    (
        "elevenlabs.toml",
        include_str!("../../rules/elevenlabs.toml"),
    ),
    ("facebook.toml", include_str!("../../rules/facebook.toml")),
    ("fastly.toml", include_str!("../../rules/fastly.toml")),
    ("figma.toml", include_str!("../../rules/figma.toml")),
    ("fireworks.toml", include_str!("../../rules/fireworks.toml")),
    (
        "flutterwave.toml",
        include_str!("../../rules/flutterwave.toml"),
    ),
    ("flyio.toml", include_str!("../../rules/flyio.toml")),
    (
        "frameworks.toml",
        include_str!("../../rules/frameworks.toml"),
    ),
    ("gcp.toml", include_str!("../../rules/gcp.toml")),
    ("generic.toml", include_str!("../../rules/generic.toml")),
    ("github.toml", include_str!("../../rules/github.toml")),
    ("gitlab.toml", include_str!("../../rules/gitlab.toml")),
    ("grafana.toml", include_str!("../../rules/grafana.toml")),
    ("groq.toml", include_str!("../../rules/groq.toml")),
    ("harness.toml", include_str!("../../rules/harness.toml")),
    ("heroku.toml", include_str!("../../rules/heroku.toml")),
    ("hetzner.toml", include_str!("../../rules/hetzner.toml")),
    ("hubspot.toml", include_str!("../../rules/hubspot.toml")),
    (
        "huggingface.toml",
        include_str!("../../rules/huggingface.toml"),
    ),
    ("infracost.toml", include_str!("../../rules/infracost.toml")),
    ("jfrog.toml", include_str!("../../rules/jfrog.toml")),
    ("jwt.toml", include_str!("../../rules/jwt.toml")),
    ("keyward.toml", include_str!("../../rules/keyward.toml")),
    (
        "kubernetes.toml",
        include_str!("../../rules/kubernetes.toml"),
    ),
    ("langsmith.toml", include_str!("../../rules/langsmith.toml")),
    (
        "launchdarkly.toml",
        include_str!("../../rules/launchdarkly.toml"),
    ),
    ("linear.toml", include_str!("../../rules/linear.toml")),
    ("mailchimp.toml", include_str!("../../rules/mailchimp.toml")),
    ("mailgun.toml", include_str!("../../rules/mailgun.toml")),
    ("mapbox.toml", include_str!("../../rules/mapbox.toml")),
    (
        "mercadopago.toml",
        include_str!("../../rules/mercadopago.toml"),
    ),
    ("mistral.toml", include_str!("../../rules/mistral.toml")),
    ("netlify.toml", include_str!("../../rules/netlify.toml")),
    ("netrc.toml", include_str!("../../rules/netrc.toml")),
    ("newrelic.toml", include_str!("../../rules/newrelic.toml")),
    ("notion.toml", include_str!("../../rules/notion.toml")),
    ("npm.toml", include_str!("../../rules/npm.toml")),
    ("nuget.toml", include_str!("../../rules/nuget.toml")),
    ("octopus.toml", include_str!("../../rules/octopus.toml")),
    ("okta.toml", include_str!("../../rules/okta.toml")),
    ("openai.toml", include_str!("../../rules/openai.toml")),
    (
        "openrouter.toml",
        include_str!("../../rules/openrouter.toml"),
    ),
    (
        "perplexity.toml",
        include_str!("../../rules/perplexity.toml"),
    ),
    ("pinecone.toml", include_str!("../../rules/pinecone.toml")),
    (
        "planetscale.toml",
        include_str!("../../rules/planetscale.toml"),
    ),
    ("postman.toml", include_str!("../../rules/postman.toml")),
    ("prefect.toml", include_str!("../../rules/prefect.toml")),
    (
        "private-key.toml",
        include_str!("../../rules/private-key.toml"),
    ),
    ("pulumi.toml", include_str!("../../rules/pulumi.toml")),
    ("pypi.toml", include_str!("../../rules/pypi.toml")),
    ("razorpay.toml", include_str!("../../rules/razorpay.toml")),
    ("readme.toml", include_str!("../../rules/readme.toml")),
    ("render.toml", include_str!("../../rules/render.toml")),
    ("replicate.toml", include_str!("../../rules/replicate.toml")),
    ("resend.toml", include_str!("../../rules/resend.toml")),
    ("rubygems.toml", include_str!("../../rules/rubygems.toml")),
    ("scaleway.toml", include_str!("../../rules/scaleway.toml")),
    ("sendgrid.toml", include_str!("../../rules/sendgrid.toml")),
    ("sentry.toml", include_str!("../../rules/sentry.toml")),
    ("shippo.toml", include_str!("../../rules/shippo.toml")),
    ("shopify.toml", include_str!("../../rules/shopify.toml")),
    ("slack.toml", include_str!("../../rules/slack.toml")),
    ("snyk.toml", include_str!("../../rules/snyk.toml")),
    ("sonarqube.toml", include_str!("../../rules/sonarqube.toml")),
    ("square.toml", include_str!("../../rules/square.toml")),
    ("stripe.toml", include_str!("../../rules/stripe.toml")),
    ("supabase.toml", include_str!("../../rules/supabase.toml")),
    ("tavily.toml", include_str!("../../rules/tavily.toml")),
    ("telegram.toml", include_str!("../../rules/telegram.toml")),
    ("tencent.toml", include_str!("../../rules/tencent.toml")),
    ("terraform.toml", include_str!("../../rules/terraform.toml")),
    ("twilio.toml", include_str!("../../rules/twilio.toml")),
    ("twitter.toml", include_str!("../../rules/twitter.toml")),
    ("typeform.toml", include_str!("../../rules/typeform.toml")),
    ("vault.toml", include_str!("../../rules/vault.toml")),
    ("vercel.toml", include_str!("../../rules/vercel.toml")),
    ("xai.toml", include_str!("../../rules/xai.toml")),
];

#[cfg(test)]
mod tests {
    /// A rules file added to `rules/` but not to [`super::FILES`] would never
    /// ship, silently; one listed but removed would not build. This holds the
    /// list to the folder.
    #[test]
    fn every_file_in_the_rules_folder_is_shipped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("read the rules folder")
            .map(|e| e.expect("a rules folder entry").file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = super::FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        listed.sort();
        assert_eq!(
            listed, on_disk,
            "rules/builtin.rs must list exactly the files of rules/"
        );
    }
}
