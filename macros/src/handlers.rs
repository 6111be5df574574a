//! `#[mesh::handlers]`: typed dispatch and the wire dispatch table.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, ImplItem, ItemImpl, ReturnType, Type};

/// One handler: `async fn <method>(&mut self, _: <msg>[, ctx]) [-> ret]`.
struct HandlerIr {
    method: Ident,
    msg: Type,
    with_ctx: bool,
    /// The handler's `#[cfg(...)]` attributes, repeated on every generated
    /// piece that names it (envelope variant, dispatch arms, wire table
    /// entry, `Handler` impl), so a handler configured out disappears from
    /// all of them at once.
    cfgs: Vec<Attribute>,
    /// Where a reply type mismatch is reported.
    ret_span: Span,
}

struct HandlersIr {
    reentrant: bool,
    self_ty: Type,
    self_ident: Ident,
    /// The block's own `#[cfg(...)]` attributes (when written after
    /// `#[mesh::handlers]`), repeated on every generated item.
    cfgs: Vec<Attribute>,
    handlers: Vec<HandlerIr>,
}

pub(crate) fn expand(args: TokenStream, item: ItemImpl) -> syn::Result<TokenStream> {
    let reentrant = match syn::parse2::<Option<Ident>>(args.clone()) {
        Ok(None) => false,
        Ok(Some(id)) if id == "reentrant" => true,
        _ => {
            return Err(syn::Error::new_spanned(
                args,
                "#[mesh::handlers] takes no arguments, or `reentrant` \
                 (`#[mesh::handlers(reentrant)]`: calls of the actor's own chain interleave)",
            ))
        }
    };
    let ir = parse(&item, reentrant)?;
    let generated = codegen(&ir);
    Ok(quote! {
        #item
        #generated
    })
}

fn parse(item: &ItemImpl, reentrant: bool) -> syn::Result<HandlersIr> {
    if let Some((_, path, _)) = &item.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[mesh::handlers] goes on an inherent `impl Actor { ... }` block, not a trait impl",
        ));
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "mesh actors cannot be generic: the actor type is part of the wire contract",
        ));
    }
    let self_ident = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new_spanned(&item.self_ty, "expected the actor's type name"))?;
    let mut handlers = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for it in &item.items {
        let ImplItem::Fn(f) = it else { continue };
        match parse_handler(f, &self_ident, reentrant) {
            Ok(h) => handlers.push(h),
            Err(e) => match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            },
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    Ok(HandlersIr {
        reentrant,
        self_ty: (*item.self_ty).clone(),
        self_ident,
        cfgs: cfgs_of(&item.attrs),
        handlers,
    })
}

fn parse_handler(f: &syn::ImplItemFn, actor: &Ident, reentrant: bool) -> syn::Result<HandlerIr> {
    let sig = &f.sig;
    let shape = if reentrant {
        "a handler of a reentrant actor is `async fn name(&self, msg: Message)` or \
         `async fn name(&self, msg: Message, ctx: &Ctx)`: calls of one chain interleave, \
         so they share the state (keep what they change in a `Mutex` or atomics); \
         put other methods in a separate impl block"
    } else {
        "a handler is `async fn name(&mut self, msg: Message)` or \
         `async fn name(&mut self, msg: Message, ctx: &Ctx)`; \
         put other methods in a separate impl block"
    };
    let want = if reentrant { "`&self`" } else { "`&mut self`" };
    // Every fn of the block is a handler, reachable from the wire: a plain
    // `fn` here is an error rather than silently a handler (or a helper).
    if sig.asyncness.is_none() {
        let (fn_token, name) = (&sig.fn_token, &sig.ident);
        return Err(syn::Error::new_spanned(
            quote!(#fn_token #name),
            format!(
                "`{name}` is not `async`: every fn in a `#[mesh::handlers]` block is a \
                 handler, callable from the wire, and must be `async fn {name}({recv}, \
                 msg: Message)` (optionally with a last `ctx: &Ctx`); \
                 a helper method goes in a separate `impl {actor} {{ ... }}` block \
                 without `#[mesh::handlers]`",
                recv = if reentrant { "&self" } else { "&mut self" },
            ),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a handler cannot be generic",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_some() != reentrant => {}
        Some(other) => {
            return Err(syn::Error::new_spanned(
                other,
                format!("expected {want}: {shape}"),
            ))
        }
        None => {
            return Err(syn::Error::new_spanned(
                &sig.ident,
                format!("missing {want}: {shape}"),
            ))
        }
    }
    let msg = match inputs.next() {
        Some(FnArg::Typed(t)) => (*t.ty).clone(),
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                format!("missing the message parameter: {shape}"),
            ))
        }
    };
    if is_ctx(&msg) {
        return Err(syn::Error::new_spanned(
            &msg,
            format!("the message comes first, then `ctx: &Ctx`: {shape}"),
        ));
    }
    if let Type::Reference(_) = msg {
        return Err(syn::Error::new_spanned(
            &msg,
            format!("a handler takes its message by value, not by reference: {shape}"),
        ));
    }
    let with_ctx = match inputs.next() {
        None => false,
        Some(FnArg::Typed(t)) if matches!(*t.ty, Type::Reference(_)) => true,
        Some(other) => {
            return Err(syn::Error::new_spanned(
                other,
                format!("the parameter after the message can only be `ctx: &Ctx`: {shape}"),
            ))
        }
    };
    if let Some(extra) = inputs.next() {
        return Err(syn::Error::new_spanned(
            extra,
            format!("too many parameters: {shape}"),
        ));
    }
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    Ok(HandlerIr {
        method: sig.ident.clone(),
        msg,
        with_ctx,
        cfgs: cfgs_of(&f.attrs),
        ret_span,
    })
}

/// The `#[cfg(...)]` attributes among `attrs`.
fn cfgs_of(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .cloned()
        .collect()
}

/// Whether `ty` is `&Ctx` (or `&mesh::Ctx`, or `Ctx`).
fn is_ctx(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(r) => &*r.elem,
        other => other,
    };
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Ctx"))
}

/// The generated code names everything by absolute path and calls every
/// function in its qualified form (`<Actor>::handler(self, ..)`,
/// `::mesh::__private::ReplyTo::send(r, ..)`): a method call such as
/// `self.count(msg)` would resolve to whatever trait in the user's scope
/// has a method of that name (`Iterator::count`) once the handler is gone.
fn codegen(ir: &HandlersIr) -> TokenStream {
    let p = quote!(::mesh::__private);
    let self_ty = &ir.self_ty;
    let block_cfgs = &ir.cfgs;
    let env = format_ident!("__MeshEnvelope{}", ir.self_ident);
    let variants: Vec<Ident> = ir
        .handlers
        .iter()
        .map(|h| format_ident!("H{}", h.method.to_string().trim_start_matches("r#")))
        .collect();

    // The reply of handler `h`, typed as the message's declared reply so a
    // mismatch is reported on the handler's return type.
    let run = |h: &HandlerIr, msg: &Ident| {
        let method = &h.method;
        let m = &h.msg;
        let ctx = h.with_ctx.then(|| quote!(, ctx));
        // The binding is spanned on the handler's return type, so a reply
        // type mismatch is reported there.
        let returned = quote_spanned!(h.ret_span=> __mesh_returned);
        quote! {
            let __mesh_returned = <#self_ty>::#method(self, #msg #ctx).await;
            let reply: <#m as #p::Message>::Reply = #returned;
        }
    };

    let enum_variants = ir.handlers.iter().zip(&variants).map(|(h, v)| {
        let m = &h.msg;
        let cfgs = &h.cfgs;
        quote!(#(#cfgs)* #v(#m, #p::ReplyTo<<#m as #p::Message>::Reply>))
    });
    let handle_arms: Vec<TokenStream> = ir
        .handlers
        .iter()
        .zip(&variants)
        .map(|(h, v)| {
            let msg = format_ident!("msg");
            let body = run(h, &msg);
            let cfgs = &h.cfgs;
            quote! {
                #(#cfgs)*
                #env::#v(msg, reply_to) => {
                    #p::finish(reply_to, ctx, async {
                        #body
                        ::core::result::Result::Ok(reply)
                    })
                    .await
                }
            }
        })
        .collect();
    let wire_arms: Vec<TokenStream> = ir
        .handlers
        .iter()
        .map(|h| {
            let m = &h.msg;
            let msg = format_ident!("msg");
            let body = run(h, &msg);
            let cfgs = &h.cfgs;
            quote! {
                #(#cfgs)*
                __mesh_tag if __mesh_tag == <#self_ty as #p::Handler<#m>>::TAG => {
                    let msg: #m = #p::decode(body)?;
                    #body
                    #p::encode(&reply)
                }
            }
        })
        .collect();
    let wire_dispatch = quote! {
        match tag {
            #(#wire_arms)*
            _ => ::core::result::Result::Err(#p::unknown_message(<#self_ty as #p::Actor>::NAME, tag)),
        }
    };
    let per_variant = |f: &dyn Fn(&Ident) -> TokenStream| -> Vec<TokenStream> {
        ir.handlers
            .iter()
            .zip(&variants)
            .map(|(h, v)| {
                let cfgs = &h.cfgs;
                let arm = f(v);
                quote!(#(#cfgs)* #arm)
            })
            .collect()
    };
    let fail_arms = per_variant(
        &|v| quote!(#env::#v(_, r) => #p::ReplyTo::send(r, ::core::result::Result::Err(err))),
    );
    let deadline_arms = per_variant(&|v| quote!(#env::#v(_, ref r) => #p::ReplyTo::deadline(r)));
    let abandoned_arms = per_variant(&|v| quote!(#env::#v(_, ref r) => #p::ReplyTo::abandoned(r)));
    let caller_arms = per_variant(&|v| quote!(#env::#v(_, ref r) => #p::ReplyTo::caller(r)));
    // The wire table, `(tag, message name)` per handler. An array literal
    // cannot hold `#[cfg]` elements, so it is filled by `#[cfg]`'d
    // statements in a const block, its length counted the same way.
    let count = ir.handlers.iter().map(|h| {
        let cfgs = &h.cfgs;
        quote!(#(#cfgs)* let () = __mesh_len += 1;)
    });
    let fill = ir.handlers.iter().map(|h| {
        let m = &h.msg;
        let cfgs = &h.cfgs;
        quote! {
            #(#cfgs)*
            let () = {
                __mesh_table[__mesh_i] =
                    (<#self_ty as #p::Handler<#m>>::TAG, <#m as #p::Message>::NAME);
                __mesh_i += 1;
            };
        }
    });
    let handler_impls = ir.handlers.iter().zip(&variants).map(|(h, v)| {
        let m = &h.msg;
        let cfgs = &h.cfgs;
        quote_spanned! {m.span()=>
            #(#block_cfgs)*
            #(#cfgs)*
            #[automatically_derived]
            impl #p::Handler<#m> for #self_ty {
                const TAG: u64 = #p::tag(
                    <#self_ty as #p::Actor>::CAPABILITY,
                    <#self_ty as #p::Actor>::NAME,
                    <#m as #p::Message>::NAME,
                );
                #[inline]
                fn __wrap(msg: #m, reply: #p::ReplyTo<<#m as #p::Message>::Reply>) -> #env {
                    #env::#v(msg, reply)
                }
            }
        }
    });

    let reentrant = ir.reentrant.then(|| {
        quote! {
            const REENTRANT: bool = true;

            #[allow(unused_variables, unreachable_code)]
            fn __interleaver<'a>(
                &'a self,
                ctx: &'a #p::Ctx,
            ) -> ::core::option::Option<#p::Interleaver<'a, Self>> {
                ::core::option::Option::Some(#p::Interleaver {
                    local: ::std::boxed::Box::new(move |env: #env| -> #p::BoxFuture<'a, #p::Outcome> {
                        ::std::boxed::Box::pin(async move {
                            match env {
                                #(#handle_arms)*
                            }
                        })
                    }),
                    wire: ::std::boxed::Box::new(move |tag: u64, body: ::std::vec::Vec<u8>| -> #p::BoxFuture<'a, ::core::result::Result<::std::vec::Vec<u8>, #p::Error>> {
                        ::std::boxed::Box::pin(async move {
                            let body = &body[..];
                            #wire_dispatch
                        })
                    }),
                })
            }
        }
    });

    // A message without serde's derives: the first error of the block is
    // this one, on the handler's message type, saying what to derive
    // (before rustc's errors for the same bounds through `Message: Wire`,
    // which list every type implementing serde's traits). The bound is
    // spanned on the type's last token so the error covers the whole type.
    let serde_checks = ir.handlers.iter().map(|h| {
        let m = &h.msg;
        let cfgs = &h.cfgs;
        let last = m
            .to_token_stream()
            .into_iter()
            .last()
            .map_or_else(|| m.span(), |t| t.span());
        let bound = quote_spanned! {last=> #m: ::mesh::__private::SerializableMessage};
        quote! {
            #(#block_cfgs)*
            #(#cfgs)*
            const _: () = {
                #[allow(dead_code)]
                fn __mesh_serializable()
                where
                    #bound,
                {
                }
            };
        }
    });

    let sync_check = ir.reentrant.then(|| {
        quote_spanned! {self_ty.span()=>
            #(#block_cfgs)*
            const _: fn() = || #p::assert_reentrant_sync::<#self_ty>();
        }
    });

    quote! {
        #(#serde_checks)*

        #sync_check

        #(#block_cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, private_interfaces, clippy::large_enum_variant)]
        pub enum #env {
            #(#enum_variants,)*
        }

        #(#block_cfgs)*
        #[automatically_derived]
        #[allow(clippy::manual_async_fn, clippy::let_unit_value, clippy::unit_arg)]
        impl #p::Handlers for #self_ty {
            type Envelope = #env;

            #[allow(unused_mut, unused_assignments)]
            const MESSAGES: &'static [(u64, &'static str)] = {
                const __MESH_LEN: usize = {
                    let mut __mesh_len = 0usize;
                    #(#count)*
                    __mesh_len
                };
                const __MESH_TABLE: [(u64, &'static str); __MESH_LEN] = {
                    let mut __mesh_table = [(0u64, ""); __MESH_LEN];
                    let mut __mesh_i = 0usize;
                    #(#fill)*
                    let _ = __mesh_i;
                    __mesh_table
                };
                &__MESH_TABLE
            };

            #[allow(unused_variables)]
            fn __handle(
                &mut self,
                env: #env,
                ctx: &#p::Ctx,
            ) -> impl ::core::future::Future<Output = #p::Outcome> + ::core::marker::Send {
                async move {
                    match env {
                        #(#handle_arms)*
                    }
                }
            }

            #[allow(unused_variables, unreachable_code)]
            fn __handle_wire(
                &mut self,
                tag: u64,
                body: &[u8],
                ctx: &#p::Ctx,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<::std::vec::Vec<u8>, #p::Error>,
            > + ::core::marker::Send {
                async move {
                    #wire_dispatch
                }
            }

            #[allow(unused_variables)]
            fn __fail(env: #env, err: #p::Error) {
                match env {
                    #(#fail_arms,)*
                }
            }

            #[allow(unused_variables)]
            fn __deadline(env: &#env) -> ::core::option::Option<#p::Instant> {
                match *env {
                    #(#deadline_arms,)*
                }
            }

            #[allow(unused_variables)]
            fn __abandoned(env: &#env) -> bool {
                match *env {
                    #(#abandoned_arms,)*
                }
            }

            #[allow(unused_variables)]
            fn __caller(env: &#env) -> #p::Caller {
                match *env {
                    #(#caller_arms,)*
                }
            }

            #reentrant
        }

        #(#handler_impls)*
    }
}
