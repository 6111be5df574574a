//! `#[derive(Actor)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, Index, LitInt, LitStr, Member, Path};

use crate::attr;

const KEYS: &[&str] = &[
    "capability",
    "idle_timeout",
    "activate",
    "on_deactivate",
    "name",
    "mailbox",
];

/// What the attributes say.
struct ActorIr {
    ident: Ident,
    name: String,
    capability: String,
    /// `None`: the default; `Some(None)`: never; `Some(Some(ms))`.
    idle_ms: Option<Option<u64>>,
    activate: Option<Path>,
    on_deactivate: Option<Path>,
    mailbox: Option<LitInt>,
    /// The struct's fields, in order, if it is a struct.
    fields: Option<Vec<Member>>,
    /// A tuple struct.
    tuple: bool,
    /// The `#[state]` field, if any.
    state: Option<StateField>,
}

/// The `#[state]` field: `#[state]` or `#[state(schema = N, upgrade = path)]`.
struct StateField {
    member: Member,
    schema: Option<LitInt>,
    upgrade: Option<Path>,
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    codegen(parse(input)?)
}

fn parse(input: DeriveInput) -> syn::Result<ActorIr> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "mesh actors cannot be generic: the actor type is part of the wire contract",
        ));
    }
    let mut capability: Option<String> = None;
    let mut name = None;
    let mut idle_ms = None;
    let mut activate = None;
    let mut on_deactivate = None;
    let mut mailbox = None;
    for a in attr::find(&input.attrs, "actor") {
        a.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("capability") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "capability must not be empty"));
                }
                capability = Some(lit.value());
            } else if p.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                name = Some(lit.value());
            } else if p.is_ident("idle_timeout") {
                let lit: LitStr = meta.value()?.parse()?;
                idle_ms = Some(attr::parse_duration(&lit)?);
            } else if p.is_ident("activate") {
                activate = Some(meta.value()?.parse()?);
            } else if p.is_ident("on_deactivate") {
                on_deactivate = Some(meta.value()?.parse()?);
            } else if p.is_ident("mailbox") {
                let lit: LitInt = meta.value()?.parse()?;
                if lit.base10_parse::<usize>()? == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "mailbox capacity must be at least 1",
                    ));
                }
                mailbox = Some(lit);
            } else {
                return Err(attr::unknown_key(p, "actor", KEYS));
            }
            Ok(())
        })?;
    }
    let (fields, tuple, state) = state_field(&input)?;
    let Some(capability) = capability else {
        return Err(syn::Error::new(
            input.ident.span(),
            format!(
                "actor `{}` has no capability: add #[actor(capability = \"...\")]",
                input.ident
            ),
        ));
    };
    Ok(ActorIr {
        name: name.unwrap_or_else(|| input.ident.to_string()),
        ident: input.ident,
        capability,
        idle_ms,
        activate,
        on_deactivate,
        mailbox,
        fields,
        tuple,
        state,
    })
}

/// The struct's fields and its `#[state]` field (one at most).
fn state_field(
    input: &DeriveInput,
) -> syn::Result<(Option<Vec<Member>>, bool, Option<StateField>)> {
    let Data::Struct(data) = &input.data else {
        return Ok((None, false, None));
    };
    let tuple = matches!(data.fields, Fields::Unnamed(_));
    let mut members = Vec::new();
    let mut state: Option<StateField> = None;
    for (i, f) in data.fields.iter().enumerate() {
        let member = match &f.ident {
            Some(id) => Member::Named(id.clone()),
            None => Member::Unnamed(Index::from(i)),
        };
        members.push(member.clone());
        for a in f.attrs.iter().filter(|a| a.path().is_ident("state")) {
            if state.is_some() {
                return Err(syn::Error::new_spanned(
                    a,
                    "one #[state] field per actor: it is one row, written in one atomic write; put the values in one struct",
                ));
            }
            let mut field = StateField {
                member: member.clone(),
                schema: None,
                upgrade: None,
            };
            if !matches!(a.meta, syn::Meta::Path(_)) {
                a.parse_nested_meta(|meta| {
                    if meta.path.is_ident("schema") {
                        let lit: LitInt = meta.value()?.parse()?;
                        if lit.base10_parse::<u32>()? == 0 {
                            return Err(syn::Error::new(lit.span(), "schema versions start at 1"));
                        }
                        field.schema = Some(lit);
                    } else if meta.path.is_ident("upgrade") {
                        field.upgrade = Some(meta.value()?.parse()?);
                    } else {
                        return Err(attr::unknown_key(
                            &meta.path,
                            "state",
                            &["schema", "upgrade"],
                        ));
                    }
                    Ok(())
                })?;
            }
            state = Some(field);
        }
    }
    Ok((Some(members), tuple, state))
}

fn codegen(ir: ActorIr) -> syn::Result<TokenStream> {
    let ActorIr {
        ident,
        name,
        capability,
        idle_ms,
        activate,
        on_deactivate,
        mailbox,
        fields,
        tuple,
        state,
    } = ir;
    let p = quote!(::mesh::__private);
    let idle = idle_ms.map(|ms| match ms {
        Some(ms) => quote! {
            const IDLE_TIMEOUT: ::core::option::Option<::core::time::Duration> =
                ::core::option::Option::Some(::core::time::Duration::from_millis(#ms));
        },
        None => quote! {
            const IDLE_TIMEOUT: ::core::option::Option<::core::time::Duration> = ::core::option::Option::None;
        },
    });
    let mailbox = mailbox.map(|n| quote!(const MAILBOX_CAPACITY: usize = #n;));
    let activate = match activate {
        Some(path) => quote_spanned! {path.span()=>
            fn activate<'a>(id: &'a str, ctx: &'a #p::Ctx) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self, #p::BoxError>,
            > + ::core::marker::Send + 'a {
                #p::activate_with::<Self, _, _>(#path, id, ctx)
            }
        },
        // A stateful actor: its state is loaded, the other fields take
        // their defaults.
        None if state.is_some() => {
            let st = state.as_ref().expect("checked");
            let schema = st.schema.as_ref().map_or(quote!(1u32), |l| quote!(#l));
            let upgrade = match &st.upgrade {
                Some(path) => quote!(::core::option::Option::Some(#path as #p::Upgrade<_>)),
                None => quote!(::core::option::Option::None),
            };
            let inits = fields.iter().flatten().map(|m| {
                let value = if *m == st.member {
                    quote!(#p::State::load_with(ctx, #schema, #upgrade).await?)
                } else {
                    quote!(::core::default::Default::default())
                };
                match m {
                    Member::Named(id) => quote!(#id: #value),
                    Member::Unnamed(_) => value,
                }
            });
            let build = if tuple {
                quote!(Self( #(#inits),* ))
            } else {
                quote!(Self { #(#inits),* })
            };
            quote_spanned! {ident.span()=>
                fn activate<'a>(_id: &'a str, ctx: &'a #p::Ctx) -> impl ::core::future::Future<
                    Output = ::core::result::Result<Self, #p::BoxError>,
                > + ::core::marker::Send + 'a {
                    async move { ::core::result::Result::Ok(#build) }
                }
            }
        }
        None => quote_spanned! {ident.span()=>
            fn activate<'a>(_id: &'a str, _ctx: &'a #p::Ctx) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self, #p::BoxError>,
            > + ::core::marker::Send + 'a {
                #p::activate_default::<Self>()
            }
        },
    };
    let on_deactivate = on_deactivate.map(|path| {
        quote_spanned! {path.span()=>
            fn on_deactivate(&mut self, ctx: &#p::Ctx) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                #p::deactivate_with(#path, self, ctx)
            }
        }
    });
    let state_fn = state.as_ref().map(|st| {
        let m = &st.member;
        quote! {
            fn __state(&mut self) -> ::core::option::Option<&mut dyn #p::Persisted> {
                ::core::option::Option::Some(&mut self.#m)
            }
        }
    });
    Ok(quote! {
        #[automatically_derived]
        #[allow(clippy::manual_async_fn, clippy::useless_conversion)]
        impl #p::Actor for #ident {
            const NAME: &'static str = #name;
            const CAPABILITY: &'static str = #capability;
            #idle
            #mailbox
            #activate
            #on_deactivate
            #state_fn
        }
    })
}
